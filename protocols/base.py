"""Wire protocols of the prediction endpoints: how instances are serialized, how they are
joined into a request body, and how a response body becomes labels.

Pure functions and small immutable objects only, so that everything here is tested directly
and is safe to pickle onto Dataflow workers. See `protocols.labels` for how one prediction
becomes labels (docs/predictions.md).
"""
import base64
import dataclasses
import json
import re
from typing import Any, ClassVar, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from core.records import writable
from imaging.tensor import TensorSpec
from protocols import answers
from protocols.embedding import EmbeddingSpec, has_label_fields, take_vector
from protocols.labels import (LabelError, Labels, LabelScores, LabelSpec, read_labels,
                              unicode_labels, warn_if_indexed)

PROTOCOLS = ("mlengine", "automl", "vertex", "v2")
INSTANCE_FORMATS = ("b64", "named", "tensor", "multimodal")
DEPLOYED_MODEL_HEADER = "X-Vertex-AI-Deployed-Model-id"


class ResponseError(Exception):
    """A response that does not carry one prediction per instance (the client finds a
    named culprit instance from the message, see `named_instance`)."""


class Parsed(NamedTuple):
    """What one prediction says: its labels, its boxes when it is a detection, and the
    prediction itself as compact JSON text; or why it cannot be read (`error`, a `parse`
    dead letter for that instance alone).

    `boxes` is None for classification; for detection it is one dict per box, score
    descending: `{label, score, x_min, x_max, y_min, y_max}` (Vertex `bboxes` order).
    """
    labels: Labels
    boxes: Optional[List[dict]] = None
    prediction: Optional[str] = None  # None when --no_prediction_column
    error: Optional[str] = None
    embedding: Any = None  # the vector, a float32 numpy array, when the model gives one


def refused(error: str) -> Parsed:
    return Parsed([], error=error)


def prediction_text(prediction: Any, sent: Optional[str] = None) -> str:
    """The prediction as compact, strict JSON text (the `prediction` column): its text as
    the endpoint `sent` it, spaces between tokens dropped, when its numbers are all finite;
    else the value written out (LabelError when a number is not finite)."""
    if sent is not None and answers.all_finite(prediction):
        compact = answers.compact_text(sent)
        if compact is not None:
            return compact
    try:
        text = json.dumps(prediction, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False, default=_as_list)
    except ValueError:
        raise LabelError("prediction holds a non-finite number (NaN or Infinity), which is "
                         "not JSON: it is never written (--no_prediction_column leaves the "
                         "prediction out, if its scores are finite)")
    return writable(text)  # a lone surrogate in a string, as its escape: "\ud800"


def _as_list(value: Any) -> Any:
    """A numpy array (a binary v2 output) as JSON can write it."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")


def read_prediction(prediction: Any, spec: LabelSpec, keep_prediction: bool,
                    reader=read_labels, sent: Optional[str] = None,
                    vectors: EmbeddingSpec = EmbeddingSpec(),
                    labels_in=has_label_fields) -> Parsed:
    """One instance's Parsed, or its refusal (`reader`: how this protocol's predictions
    become labels, `read_labels` unless it has its own shape; `sent`: the prediction's JSON
    text in the response, if known; `vectors`: where its embedding is, if it has one).
    Beside a vector, labels are read from the rest of the prediction when `labels_in` it
    (or a labels flag points at them); a row with a vector keeps its `prediction` text only
    with --keep_embedding_prediction."""
    try:
        embedding, rest = take_vector(prediction, vectors)
        if embedding is None or spec.labels_field or spec.scores_field or labels_in(rest):
            named = warn_if_indexed(unicode_labels(reader(rest, spec)))
        else:
            named = LabelScores([])
        keep = keep_prediction and (embedding is None or vectors.keep_prediction)
        text = prediction_text(prediction, sent) if keep else None
    except LabelError as e:
        return refused(str(e))
    except RecursionError:
        return refused("prediction is nested too deeply to read")
    return Parsed(named.labels, prediction=text, embedding=embedding)


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64_json(data: bytes) -> bytes:
    """The bytes' base64 as a JSON string (the same bytes `dumps(b64(data))` gives: the
    base64 alphabet needs no escaping), without the JSON encoder's cost."""
    return b'"' + base64.b64encode(data) + b'"'


def float_format(dtype) -> str:
    """printf format of a float tensor's numbers in JSON: enough digits to give back the
    same float16/float32 (5 / 9 significant digits)."""
    return "%.5g" if dtype.itemsize == 2 else "%.9g"


def tensor_numbers(array) -> bytes:
    """The numbers of a tensor, row-major, comma-separated (a v2 JSON `data`)."""
    if array.dtype.kind in "ui":
        return ",".join(map(str, array.ravel().tolist())).encode("ascii")
    return (",".join([float_format(array.dtype)] * array.size)
            % tuple(array.ravel().tolist())).encode("ascii")


def tensor_json(array) -> bytes:
    """A tensor as nested JSON lists (an ML Engine / TF Serving instance)."""
    if array.dtype.kind in "ui":
        return dumps(array.tolist())
    last = array.shape[-1]
    row = "[" + ",".join([float_format(array.dtype)] * last) + "]"
    text = [row % tuple(values) for values in array.reshape(-1, last).tolist()]
    for size in reversed(array.shape[:-1]):
        text = ["[" + ",".join(text[i:i + size]) + "]" for i in range(0, len(text), size)]
    return text[0].encode("ascii")


def parameters_field():
    """A `parameters` field: a JSON object (a dict, so left out of the hash; still compared)."""
    return dataclasses.field(default_factory=dict, hash=False)


class Protocol:
    """One endpoint protocol. Subclasses (frozen dataclasses: values, compared and pickled
    by their fields) say how instances and bodies look."""

    name: ClassVar[str] = ""
    max_instances: ClassVar[Optional[int]] = None  # the protocol's own cap, if any
    # Image formats the model takes as they are (others are re-encoded; None: the usual
    # ones, imaging.decode.SENDABLE_FORMATS) and the largest image file it takes.
    image_formats: ClassVar[Optional[Tuple[str, ...]]] = None
    max_image_bytes: ClassVar[Optional[int]] = None
    tensor: Optional[TensorSpec] = None  # instances are tensors prepared so (None: image files)
    embedding: EmbeddingSpec = EmbeddingSpec()  # where the vector is (no field: none read)

    def uri_instance(self, key: str, uri: str) -> Optional[bytes]:
        """The instance that names the image by `uri` instead of carrying its bytes, when
        this protocol sends such instances for it (None: the bytes are read and sent)."""
        return None

    def set_fields(self, **fields):
        """Normalise fields in `__post_init__` (the dataclass is frozen)."""
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def instance(self, key: str, data: bytes, mime_type: str, tensor=None) -> bytes:
        """One serialized instance: of the image file `data`, or of its `tensor` (a numpy
        array shaped as `self.tensor` says) when the protocol sends tensors."""
        raise NotImplementedError

    def body_parts(self) -> Tuple[bytes, bytes]:
        """The bytes before the first instance and after the last one."""
        raise NotImplementedError

    def body(self, instances: Sequence[bytes]) -> bytes:
        prefix, suffix = self.body_parts()
        return b"".join((prefix, b",".join(instances), suffix))

    def request(self, instances: Sequence[bytes]) -> Tuple[bytes, Dict[str, str]]:
        """The request body and the headers it needs besides the client's own."""
        return self.body(instances), {}

    def request_size(self, count: int, data_size: int) -> int:
        """The exact size of the body of `count` instances of `data_size` bytes in all."""
        prefix, suffix = self.body_parts()
        return len(prefix) + len(suffix) + data_size + max(count - 1, 0)

    def body_size(self, instance_sizes: Sequence[int]) -> int:
        """The exact size of `body()` for instances of these sizes, without building it."""
        return self.request_size(len(instance_sizes), sum(instance_sizes))

    def decode(self, raw: bytes, headers: Mapping[str, str]) -> Any:
        """The response body as data (ValueError when it is unreadable); each prediction's
        text kept, unless every row will be a vector's, whose text is left out."""
        if not raw:
            return with_model_id(None, headers)
        texts_wanted = not self.embedding.field or self.embedding.keep_prediction
        return with_model_id(answers.loads(raw) if texts_wanted else json.loads(raw), headers)

    def parse(self, response: Any, count: int) -> List[Parsed]:
        """One Parsed per instance, in order; ResponseError when that is not what came."""
        raise NotImplementedError

    def model_name(self, response: Any, endpoint: str) -> str:
        if isinstance(response, dict) and response.get("deployedModelId"):
            return str(response["deployedModelId"])
        return resource_name(endpoint)


_INSTANCE_INDEX = re.compile(r"instances?\s*\[?\s*(\d{1,9})(?!\d)", re.IGNORECASE)


def with_model_id(response: Any, headers: Mapping[str, str]) -> Any:
    """The response with the deployed model id that Vertex sends as a header (`:rawPredict`)
    kept as `deployedModelId`."""
    model_id = headers.get(DEPLOYED_MODEL_HEADER)
    if model_id and isinstance(response, dict) and "deployedModelId" not in response:
        response["deployedModelId"] = model_id
    return response


def error_message(response: Any) -> Optional[str]:
    """The endpoint's error message, for either error shape; None when the body is no error."""
    if not isinstance(response, dict) or "error" not in response:
        return None
    error = response["error"]
    if isinstance(error, dict):
        return str(error.get("message") or error.get("status") or error)
    return str(error)


def named_instance(message: str) -> Optional[int]:
    """The instance index an error message names (`instance 3`, `instances[3]`), if any."""
    match = _INSTANCE_INDEX.search(message or "")
    return int(match.group(1)) if match else None


def response_predictions(response: Any, count: int) -> list:
    message = error_message(response)
    if message is not None:
        raise ResponseError(message)
    predictions = response.get("predictions") if isinstance(response, dict) else None
    if not isinstance(predictions, list):
        raise ResponseError(f"response has no predictions list: {json_snippet(response)}")
    if len(predictions) != count:
        raise ResponseError(
            f"response has {len(predictions)} predictions for {count} instances")
    return predictions


def sent_texts(predictions: list) -> List[Optional[str]]:
    """Each prediction's JSON text as the endpoint sent it (None where not known)."""
    if isinstance(predictions, answers.Predictions):
        return predictions.texts
    return [None] * len(predictions)


def resource_name(endpoint: str) -> str:
    """`projects/p/models/m` out of a full `...:predict` (or `:rawPredict`) URL, Vertex
    dedicated endpoints included (the endpoint itself otherwise)."""
    path = endpoint.split("://", 1)[-1]
    path = path.split("/", 1)[1] if "/" in path else path
    path = re.sub(r":(?:predict|rawPredict)$", "", path)
    match = re.search(r"(projects/.*)$", path)
    return match.group(1) if match else path


def json_snippet(value: Any, limit: int = 200) -> str:
    try:
        text = json.dumps(value) if not isinstance(value, str) else value
    except RecursionError:
        text = f"(a {type(value).__name__} nested too deeply to show)"
    return text if len(text) <= limit else text[:limit] + "..."
