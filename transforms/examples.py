"""tf.train.Example without TensorFlow: reading features for an image, a key and the
passed-through columns.

Examples are parsed with the `protobuf` package Beam already depends on, no TensorFlow: the
messages of TensorFlow's `example.proto` and `feature.proto` are built at import time from a
FileDescriptorProto in a private descriptor pool, so no generated `_pb2` module is pinned to
one protobuf version, and a process that also loads TensorFlow's (or another package's)
`tensorflow.Example` into the default pool does not clash with these.
"""
import json
import re
import struct
from typing import Optional, Sequence, Tuple

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError


def _field(name: str, number: int, kind: int, label: int = 1, type_name: str = "",
           oneof_index: Optional[int] = None) -> descriptor_pb2.FieldDescriptorProto:
    field = descriptor_pb2.FieldDescriptorProto(name=name, number=number, type=kind,
                                                label=label)
    if type_name:
        field.type_name = type_name
    if oneof_index is not None:
        field.oneof_index = oneof_index
    return field


def example_file() -> descriptor_pb2.FileDescriptorProto:
    """TensorFlow's Example, Features, Feature, BytesList, FloatList and Int64List
    (`tensorflow/core/example/{example,feature}.proto`): the same names, numbers and types,
    so the same bytes on the wire."""
    f = descriptor_pb2.FieldDescriptorProto
    repeated, packed = f.LABEL_REPEATED, descriptor_pb2.FieldOptions(packed=True)
    proto = descriptor_pb2.FileDescriptorProto(
        name="beam_batch_predict/tensorflow_example.proto", package="tensorflow",
        syntax="proto3")
    for name, kind, options in (("BytesList", f.TYPE_BYTES, None),
                                ("FloatList", f.TYPE_FLOAT, packed),
                                ("Int64List", f.TYPE_INT64, packed)):
        value = _field("value", 1, kind, repeated)
        if options is not None:
            value.options.CopyFrom(options)
        proto.message_type.add(name=name).field.append(value)
    feature = proto.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    for number, name in enumerate(("bytes_list", "float_list", "int64_list"), start=1):
        type_name = ".tensorflow." + name.title().replace("_", "")
        feature.field.append(_field(name, number, f.TYPE_MESSAGE, type_name=type_name,
                                    oneof_index=0))
    features = proto.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.extend([_field("key", 1, f.TYPE_STRING),
                        _field("value", 2, f.TYPE_MESSAGE, type_name=".tensorflow.Feature")])
    features.field.append(_field("feature", 1, f.TYPE_MESSAGE, repeated,
                                 ".tensorflow.Features.FeatureEntry"))
    proto.message_type.add(name="Example").field.append(
        _field("features", 1, f.TYPE_MESSAGE, type_name=".tensorflow.Features"))
    return proto


def _message_class(pool: descriptor_pool.DescriptorPool, name: str):
    descriptor = pool.FindMessageTypeByName(name)
    if hasattr(message_factory, "GetMessageClass"):  # newer protobuf; GetPrototype before
        return message_factory.GetMessageClass(descriptor)
    return message_factory.MessageFactory(pool).GetPrototype(descriptor)


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(example_file())
Example = _message_class(_POOL, "tensorflow.Example")


class RecordError(ValueError):
    """A record that cannot become an ImageRef (the message names its file and record)."""


def example_features(data: bytes, where: str):
    """The feature map of a serialized Example; RecordError when the bytes are not one."""
    try:
        return Example.FromString(data).features.feature
    except DecodeError as e:
        raise RecordError(f"{where}: not a tf.train.Example ({e}); if each record is an "
                          f"image's bytes, give --tfrecord_feature ''")


def feature_values(feature) -> Tuple[str, Sequence]:
    """(`bytes`, `float`, `int64` or `empty`, the values) of one Feature."""
    kind = feature.WhichOneof("kind")
    if kind is None:
        return "empty", ()
    return kind[:-len("_list")], getattr(feature, kind).value


def describe(kind: str, values: Sequence) -> str:
    """`2 bytes values`, `1 int64 value`, `no value`."""
    if not values:
        return "no value"
    return f"{len(values)} {kind} value{'' if len(values) == 1 else 's'}"


def feature_names(features) -> str:
    return ", ".join(sorted(features)) or "none"


def no_feature(features, name: str, flag: str, where: str) -> str:
    """`<where>: no feature 'image/encoded' (--tfrecord_feature; features: id, label)`."""
    return f"{where}: no feature {name!r} ({flag}; features: {feature_names(features)})"


def one_value(features, name: str, kinds: Sequence[str], flag: str, where: str):
    """The one value of feature `name` of one of `kinds`; RecordError naming what is there."""
    if name not in features:
        raise RecordError(no_feature(features, name, flag, where))
    kind, values = feature_values(features[name])
    if kind not in kinds or len(values) != 1:
        wanted = " or ".join(kinds)
        raise RecordError(f"{where}: feature {name!r} holds {describe(kind, values)}, not "
                          f"one {wanted} value ({flag})")
    return values[0]


def record_key(features, name: str, where: str) -> str:
    """A record's key from its --key_field feature: one UTF-8 text or integer value."""
    value = one_value(features, name, ("bytes", "int64"), "--key_field", where)
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise RecordError(f"{where}: key feature {name!r} is not valid UTF-8")
    text = str(value).strip()
    if not text:
        raise RecordError(f"{where}: key feature {name!r} is blank")
    return text


def float32_text(value: float) -> str:
    """The shortest decimal that reads back as the same float32 (`0.1`, not
    `0.10000000149011612`)."""
    for digits in range(6, 10):
        text = f"{value:.{digits}g}"
        if struct.unpack("<f", struct.pack("<f", float(text)))[0] == value:
            return text
    return repr(value)  # NaN and infinities: not reached for finite values


def plain_value(kind: str, value):
    """One feature value as a JSON-able Python value: text (bytes that are not UTF-8 with
    their bytes escaped as `\\xNN`), an int, or a float32 at its shortest."""
    if kind == "bytes":
        return value.decode("utf-8", "backslashreplace")
    if kind == "float":
        text = float32_text(value)
        return float(text) if text not in ("nan", "inf", "-inf") else text
    return value


def feature_text(feature) -> Optional[str]:
    """A feature as a pass-through value: its one value as text, several as a JSON list,
    none as null."""
    kind, values = feature_values(feature)
    plain = [plain_value(kind, v) for v in values]
    if not plain:
        return None
    if len(plain) > 1:
        return json.dumps(plain, ensure_ascii=False, separators=(",", ":"))
    return float32_text(values[0]) if kind == "float" else str(plain[0])


def column_name(feature: str) -> str:
    """The output column a feature goes to: `image/class/label` -> `image_class_label`."""
    return re.sub(r"[^A-Za-z0-9_]", "_", feature)


def passthrough_value(features, name: str) -> Optional[str]:
    """The --passthrough_fields value `name`: the feature of that name, else the first (by
    name) whose column name it is (`image_filename` for `image/filename`); None without one."""
    if name in features:
        return feature_text(features[name])
    named = sorted(f for f in features if column_name(f) == name)
    return feature_text(features[named[0]]) if named else None
