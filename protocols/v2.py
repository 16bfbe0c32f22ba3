"""The Open Inference Protocol (KServe v2; Triton, MLServer, KServe ModelServer) as a Protocol.

Request: one input tensor holding every image of the request, either a BYTES tensor of shape
`[n]` (the image file's bytes: base64 text in JSON, raw with the binary tensor data extension)
or, for `--instance_format tensor`, a UINT8/FP32 tensor `[n, H, W, 3]` of RGB pixels (0-255).
Response: the output tensors (JSON `data`, or binary parts after the JSON header) give one row
per image; an image's rows, `{output name: row}`, are its prediction (the `prediction`
column). Its labels come from the outputs --labels_field / --scores_field name, else from
Triton classification strings (`score:index[:label]`), a BYTES label tensor with a numeric
score tensor, or a numeric score tensor (named by --label_names / --label_names_file), all
named and checked by `protocols.labels`; an image whose rows cannot be read is refused
alone. Every output's first dimension must be the image count (a ResponseError otherwise).
"""
import dataclasses
import json
import math
import re
import struct
from typing import Any, ClassVar, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from imaging.tensor import DTYPES, TensorSpec
from protocols.base import (b64_json, dumps, error_message, json_snippet, parameters_field,
                            Protocol, read_prediction, ResponseError, tensor_numbers,
                            with_model_id)
from protocols.embedding import EmbeddingSpec
from protocols.labels import (FIELD_FLAGS, is_triton_classes, LabelError, labels_with_scores,
                              LabelScores, LabelSpec, triton_classes)

HEADER_LENGTH = "Inference-Header-Content-Length"
TENSOR_DTYPES = tuple(DTYPES)  # the pixel tensors this client sends
# struct codes of the numeric datatypes (little-endian in binary parts).
NUMERIC = {"BOOL": "?", "UINT8": "B", "UINT16": "H", "UINT32": "I", "UINT64": "Q",
           "INT8": "b", "INT16": "h", "INT32": "i", "INT64": "q",
           "FP16": "e", "FP32": "f", "FP64": "d"}
_ENDPOINT = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")


class Tensor(NamedTuple):
    name: str
    datatype: str
    shape: Tuple[int, ...]
    data: list  # flat, row-major; BYTES elements as str


@dataclasses.dataclass(frozen=True)
class V2(Protocol):
    """`POST .../v2/models/NAME[/versions/V]/infer` with one image input tensor: a BYTES
    tensor of image files, or (`instance_format` tensor) the images' pixel tensors prepared
    as `tensor` says, `[n, H, W, 3]` or `[n, 3, H, W]` (set from the model's metadata by the
    start-up check when the flags leave it open)."""

    name: ClassVar[str] = "v2"
    input_name: str = ""
    binary: bool = False
    instance_format: str = "b64"
    tensor: Optional[TensorSpec] = None
    labels: LabelSpec = LabelSpec()
    keep_prediction: bool = True
    parameters: Dict[str, Any] = parameters_field()
    outputs: Sequence[str] = ()
    classification: int = 0
    embedding: EmbeddingSpec = EmbeddingSpec()

    def __post_init__(self):
        if self.instance_format not in ("b64", "tensor"):
            raise ValueError("--protocol v2 takes --instance_format b64 or tensor")
        if self.tensor is not None and self.instance_format != "tensor":
            raise ValueError("the tensor flags apply to --instance_format tensor")
        self.set_fields(parameters=dict(self.parameters or {}), outputs=tuple(self.outputs))

    @property
    def datatype(self) -> str:
        """The input tensor's datatype."""
        if self.instance_format != "tensor":
            return "BYTES"
        return self.tensor.dtype if self.tensor is not None else "a tensor"

    def with_model(self, input_name: str, outputs: Sequence[str],
                   tensor: Optional[TensorSpec] = None,
                   embedding: Optional[EmbeddingSpec] = None) -> "V2":
        """This protocol with the input and output names (and the tensor, and where the
        vector is) the model's metadata completed."""
        return dataclasses.replace(self, input_name=input_name, outputs=tuple(outputs),
                                   tensor=tensor if tensor is not None else self.tensor,
                                   embedding=embedding or self.embedding)

    # Request -----------------------------------------------------------------------------

    def instance(self, key, data, mime_type, tensor=None):
        if self.instance_format == "tensor":
            if self.tensor is None or tensor is None:
                raise ValueError("tensor instances need the model's input shape (from its "
                                 "metadata or --image_size) and the image's tensor")
            if self.binary:
                return tensor.astype(tensor.dtype.newbyteorder("<"), copy=False).tobytes()
            return tensor_numbers(tensor)
        if self.binary:
            return struct.pack("<I", len(data)) + data
        return b64_json(data)

    def _input(self, count: int) -> dict:
        if self.instance_format == "tensor" and self.tensor is not None:
            return {"name": self.input_name, "shape": [count, *self.tensor.shape],
                    "datatype": self.tensor.dtype}
        return {"name": self.input_name, "shape": [count], "datatype": "BYTES"}

    def _requested_outputs(self) -> List[dict]:
        requested = []
        for name in self.outputs:
            parameters = {}
            if self.binary:
                parameters["binary_data"] = True
            if self.classification and name != self.embedding.field:
                parameters["classification"] = self.classification
            requested.append({"name": name, **({"parameters": parameters} if parameters else {})})
        return requested

    def _header(self, count: int, data_size: int) -> bytes:
        """The JSON of the request; for binary, complete, else without the data's bytes."""
        tensor = self._input(count)
        if self.binary:
            tensor["parameters"] = {"binary_data_size": data_size}
        request: Dict[str, Any] = {"inputs": [tensor]}
        if self.outputs:
            request["outputs"] = self._requested_outputs()
        if self.parameters:
            request["parameters"] = self.parameters
        return dumps(request)

    def _json_parts(self, count: int) -> Tuple[bytes, bytes]:
        header = self._header(count, 0)
        marker = b'"datatype":' + dumps(self._input(count)["datatype"])
        at = header.index(marker) + len(marker)
        return header[:at] + b',"data":[', b"]" + header[at:]

    def body_parts(self):
        return self._json_parts(1) if not self.binary else (b"", b"")

    def body(self, instances):
        return self.request(instances)[0]

    def request(self, instances):
        if self.binary:
            data = b"".join(instances)
            header = self._header(len(instances), len(data))
            return header + data, {"Content-Type": "application/octet-stream",
                                   HEADER_LENGTH: str(len(header))}
        prefix, suffix = self._json_parts(len(instances))
        return b"".join((prefix, b",".join(instances), suffix)), {}

    def request_size(self, count: int, data_size: int) -> int:
        if self.binary:
            return len(self._header(count, data_size)) + data_size
        prefix, suffix = self._json_parts(count)
        return len(prefix) + len(suffix) + data_size + max(count - 1, 0)

    # Response ----------------------------------------------------------------------------

    def decode(self, raw: bytes, headers: Mapping[str, str]) -> Any:
        arrays = (self.embedding.field,) if self.embedding.field else ()
        return decode_response(raw, headers, arrays)

    def parse(self, response, count):
        message = error_message(response)
        if message is not None:
            raise ResponseError(message)
        tensors = output_tensors(response)
        for tensor in tensors:
            if not tensor.shape or tensor.shape[0] != count:
                raise ResponseError(f"output {tensor.name!r} has shape {list(tensor.shape)} "
                                    f"for {count} images")
        return [read_prediction(outputs, self.labels, self.keep_prediction, read_outputs,
                                vectors=self.embedding, labels_in=bool)
                for outputs in instance_outputs(tensors, count)]

    def model_name(self, response, endpoint):
        if isinstance(response, dict) and response.get("deployedModelId"):
            return str(response["deployedModelId"])
        if isinstance(response, dict) and response.get("model_name"):
            version = response.get("model_version")
            return f"{response['model_name']}/versions/{version}" if version \
                else str(response["model_name"])
        return endpoint


def model_path(endpoint: str) -> Optional[Tuple[str, str]]:
    """(server base URL, `/v2/models/NAME[/versions/V]`) of an infer URL; None if it is none."""
    path = endpoint.split("?", 1)[0]
    match = _ENDPOINT.search(path)
    if not match:
        return None
    return path[:match.start()], path[match.start():-len("/infer")]


def is_raw_predict(endpoint: str) -> bool:
    """A Vertex `:rawPredict` URL (the body goes to the model's container as it is)."""
    return endpoint.split("?", 1)[0].endswith(":rawPredict")


# Responses -------------------------------------------------------------------------------


def decode_response(raw: bytes, headers: Mapping[str, str], arrays: Sequence[str] = ()) -> Any:
    """The response JSON, with binary output parts decoded into each output's `data` (the
    numeric outputs named in `arrays` as numpy arrays over the body's bytes, not lists)."""
    length = headers.get(HEADER_LENGTH)
    if length is None:
        return with_model_id(json.loads(raw) if raw else None, headers)
    size = int(length)
    response = json.loads(raw[:size])
    try:
        _inline_binary(response, raw[size:], arrays)
    except (AttributeError, TypeError) as e:  # a header field of the wrong JSON type
        raise ValueError(f"malformed binary output header: {e}")
    return with_model_id(response, headers)


def _inline_binary(response: Any, tail: bytes, arrays: Sequence[str] = ()):
    at = 0
    for output in response.get("outputs") or [] if isinstance(response, dict) else []:
        size = ((output.get("parameters") or {}).get("binary_data_size")
                if isinstance(output, dict) else None)
        if size is None:
            continue
        datatype = output.get("datatype", "")
        if output.get("name") in arrays and datatype in NUMERIC and datatype != "BOOL":
            output["data"] = unpack_array(datatype, tail[at:at + size])
        else:
            output["data"] = unpack(datatype, tail[at:at + size])
        at += size
    if at != len(tail):
        raise ValueError(f"binary outputs declare {at} bytes, the body carries {len(tail)}")


def unpack(datatype: str, part: bytes) -> list:
    """The flat elements of one binary tensor part (ValueError when it is malformed)."""
    try:
        return _unpack(datatype, part)
    except struct.error as e:
        raise ValueError(f"malformed binary {datatype} output: {e}")


def unpack_array(datatype: str, part: bytes):
    """A numeric binary part as a flat numpy array viewing its bytes (ValueError when its
    length is no whole number of elements)."""
    dtype = np.dtype("<" + NUMERIC[datatype])
    if len(part) % dtype.itemsize:
        raise ValueError(f"malformed binary {datatype} output: {len(part)} bytes")
    return np.frombuffer(part, dtype)


def _unpack(datatype: str, part: bytes) -> list:
    if datatype == "BYTES":
        items, at = [], 0
        while at < len(part):
            (size,) = struct.unpack_from("<I", part, at)
            items.append(part[at + 4:at + 4 + size].decode("utf-8", "replace"))
            at += 4 + size
        return items
    code = NUMERIC.get(datatype)
    if code is None:
        raise ValueError(f"unknown datatype {datatype!r}")
    count = len(part) // struct.calcsize(code)
    return list(struct.unpack(f"<{count}{code}", part))


def output_tensors(response: Any) -> List[Tensor]:
    outputs = response.get("outputs") if isinstance(response, dict) else None
    if not isinstance(outputs, list) or not outputs:
        raise ResponseError(f"response has no outputs: {json_snippet(response)}")
    tensors = []
    for output in outputs:
        try:
            shape = tuple(int(d) for d in output["shape"])
            tensors.append(Tensor(str(output["name"]), str(output["datatype"]), shape,
                                  _flat(output["data"])))
        except (KeyError, TypeError, ValueError, OverflowError, RecursionError):
            raise ResponseError(f"unreadable output tensor: {json_snippet(output)}")
        if len(tensors[-1].data) != math.prod(shape):
            raise ResponseError(f"output {tensors[-1].name!r} of shape {list(shape)} has "
                                f"{len(tensors[-1].data)} elements")
    return tensors


def _flat(data: Any) -> list:
    if isinstance(data, np.ndarray):
        return data.reshape(-1)
    if not isinstance(data, list):
        raise TypeError("data is not a list")
    if any(isinstance(v, list) for v in data):
        return [x for v in data for x in _flat(v if isinstance(v, list) else [v])]
    return data


def _rows(tensor: Tensor, count: int) -> List[list]:
    width = len(tensor.data) // count if count else 0
    return [tensor.data[i * width:(i + 1) * width] for i in range(count)]


def instance_outputs(tensors: Sequence[Tensor], count: int) -> List[Dict[str, list]]:
    """Each image's slice of every output tensor, `{output name: flat row}`, in output order."""
    rows = [_rows(t, count) for t in tensors]
    return [{t.name: r[i] for t, r in zip(tensors, rows)} for i in range(count)]


def read_outputs(outputs: Mapping[str, list], spec: LabelSpec = LabelSpec()) -> LabelScores:
    """One image's labels from its slice of the outputs (`protocols.labels` names and
    checks them): the outputs --labels_field / --scores_field name, else the first output of
    classification strings, else the one numeric output (with the one text output as its
    labels, if there is one)."""
    if spec.labels_field or spec.scores_field:
        labels = named_output(outputs, spec.labels_field, "--labels_field")
        values = named_output(outputs, spec.scores_field, "--scores_field")
        if values is None and is_triton_classes(labels):
            return triton_classes(labels, spec.names)
        return labels_with_scores(labels, values, spec.names)
    rows = list(outputs.values())
    classified = [r for r in rows if is_triton_classes(r)]
    if classified:
        return triton_classes(classified[0], spec.names)
    texts, numbers = [], []
    for row in rows:
        (texts if row and all(isinstance(v, str) for v in row) else numbers).append(row)
    if len(numbers) != 1 or len(texts) > 1:
        raise LabelError(f"cannot tell labels from scores among the outputs "
                         f"{', '.join(outputs)}: name them with {FIELD_FLAGS}")
    return labels_with_scores(texts[0] if texts else None, numbers[0], spec.names)


def named_output(outputs: Mapping[str, list], name: Optional[str], flag: str) -> Optional[list]:
    if name is None:
        return None
    if name not in outputs:
        raise LabelError(f"{flag} {name}: the response has no such output (its outputs: "
                         f"{', '.join(outputs)})")
    return outputs[name]


# Preflight -------------------------------------------------------------------------------


