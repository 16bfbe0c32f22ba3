"""Wire protocols of the prediction endpoints: how instances are serialized, how they are
joined into a request body, and how a response body becomes labels.

Pure functions and small immutable objects only, so that everything here is tested directly
and is safe to pickle onto Dataflow workers.
"""
import base64
import json
import re
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

Labels = List[Tuple[str, float]]

PROTOCOLS = ("mlengine", "automl", "vertex")
INSTANCE_FORMATS = ("b64", "named", "tensor")


class ResponseError(Exception):
    """A response that does not carry one usable prediction per instance (the client finds
    a named culprit instance from the message, see `named_instance`)."""


class Parsed(NamedTuple):
    """What one prediction says: its labels, and its boxes when it is a detection.

    `boxes` is None for classification; for detection it is one dict per box, score
    descending: `{label, score, x_min, x_max, y_min, y_max}` (Vertex `bboxes` order).
    """
    labels: Labels
    boxes: Optional[List[dict]] = None


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class Protocol:
    """One endpoint protocol. Subclasses say how instances and bodies look."""

    name = ""
    max_instances: Optional[int] = None  # the protocol's own cap, if any

    def _identity(self) -> str:
        return type(self).__name__ + json.dumps(vars(self), sort_keys=True, default=repr)

    def __eq__(self, other):
        return type(other) is type(self) and other._identity() == self._identity()

    def __hash__(self):
        # By value: a worker's unpickled copies of one protocol share one predict engine.
        return hash(self._identity())

    def instance(self, key: str, data: bytes, mime_type: str, pixels=None) -> bytes:
        raise NotImplementedError

    def body_parts(self) -> Tuple[bytes, bytes]:
        """The bytes before the first instance and after the last one."""
        raise NotImplementedError

    def body(self, instances: Sequence[bytes]) -> bytes:
        prefix, suffix = self.body_parts()
        return b"".join((prefix, b",".join(instances), suffix))

    def body_size(self, instance_sizes: Sequence[int]) -> int:
        """The exact size of `body()` for instances of these sizes, without building it."""
        prefix, suffix = self.body_parts()
        return len(prefix) + len(suffix) + sum(instance_sizes) + max(len(instance_sizes) - 1, 0)

    def parse(self, response: Any, count: int) -> List[Parsed]:
        """One Parsed per instance, in order; ResponseError when that is not what came."""
        raise NotImplementedError

    def model_name(self, response: Any, endpoint: str) -> str:
        if isinstance(response, dict) and response.get("deployedModelId"):
            return str(response["deployedModelId"])
        return resource_name(endpoint)


class MLEngine(Protocol):
    """Cloud ML Engine / AI Platform `{"instances": [...]}` with b64, named or tensor instances."""

    name = "mlengine"

    def __init__(self, instance_format: str = "b64", label_set: Sequence[str] = ()):
        if instance_format not in INSTANCE_FORMATS:
            raise ValueError(f"unknown instance format {instance_format!r}")
        self.instance_format = instance_format
        self.label_set = tuple(label_set)

    def instance(self, key, data, mime_type, pixels=None):
        if self.instance_format == "tensor":
            if pixels is None:
                raise ValueError("tensor instances need decoded pixels")
            return _dumps(pixels)
        if self.instance_format == "named":
            return _dumps({"key": key, "image": {"b64": b64(data)}})
        return _dumps({"b64": b64(data)})

    def body_parts(self):
        return b'{"instances":[', b"]}"

    def parse(self, response, count):
        predictions = _predictions(response, count)
        return [Parsed(labels_from_prediction(p, self.label_set)) for p in predictions]


class Vertex(Protocol):
    """Vertex AI endpoint with `{content, mimeType}` image instances."""

    name = "vertex"

    def __init__(self, parameters: Optional[dict] = None, label_set: Sequence[str] = ()):
        self.parameters = dict(parameters or {})
        self.label_set = tuple(label_set)

    def instance(self, key, data, mime_type, pixels=None):
        return _dumps({"content": b64(data), "mimeType": mime_type})

    def body_parts(self):
        suffix = b"]}"
        if self.parameters:
            suffix = b'],"parameters":' + _dumps(self.parameters) + b"}"
        return b'{"instances":[', suffix

    def parse(self, response, count):
        predictions = _predictions(response, count)
        return [parse_vertex_prediction(p, self.label_set) for p in predictions]


class AutoML(Protocol):
    """AutoML Vision v1beta1: one image per request as `payload.image.imageBytes`."""

    name = "automl"
    max_instances = 1

    def __init__(self, score_threshold: Optional[float] = None):
        self.score_threshold = score_threshold

    def instance(self, key, data, mime_type, pixels=None):
        return _dumps({"image": {"imageBytes": b64(data)}})

    def body_parts(self):
        suffix = b"}"
        if self.score_threshold is not None:
            suffix = b',"params":' + _dumps({"score_threshold": str(self.score_threshold)}) + b"}"
        return b'{"payload":', suffix

    def parse(self, response, count):
        if count != 1:
            raise ResponseError(f"AutoML answers one image per request, not {count}")
        if not isinstance(response, dict) or not isinstance(response.get("payload", []), list):
            raise ResponseError(f"unexpected AutoML response: {_snippet(response)}")
        labels = []
        for item in response.get("payload", []):
            try:
                labels.append((str(item["displayName"]), float(item["classification"]["score"])))
            except (KeyError, TypeError, ValueError):
                raise ResponseError(f"unexpected AutoML payload item: {_snippet(item)}")
        return [Parsed(labels)]


def make_protocol(name: str, instance_format: str = "b64", label_set: Sequence[str] = (),
                  score_threshold: Optional[float] = None) -> Protocol:
    if name == "mlengine":
        return MLEngine(instance_format, label_set)
    if name == "vertex":
        params = {} if score_threshold is None else {"confidenceThreshold": score_threshold}
        return Vertex(params, label_set)
    if name == "automl":
        return AutoML(score_threshold)
    raise ValueError(f"unknown protocol {name!r} (choose from {', '.join(PROTOCOLS)})")


_INSTANCE_INDEX = re.compile(r"instances?\s*\[?\s*(\d+)", re.IGNORECASE)


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


def _predictions(response: Any, count: int) -> list:
    message = error_message(response)
    if message is not None:
        raise ResponseError(message)
    predictions = response.get("predictions") if isinstance(response, dict) else None
    if not isinstance(predictions, list):
        raise ResponseError(f"response has no predictions list: {_snippet(response)}")
    if len(predictions) != count:
        raise ResponseError(
            f"response has {len(predictions)} predictions for {count} instances")
    return predictions


def parse_vertex_prediction(prediction: Any, label_set: Sequence[str] = ()) -> Parsed:
    """A Vertex prediction: classification labels, plus boxes for object detection."""
    labels = labels_from_prediction(prediction, label_set)
    bboxes = prediction.get("bboxes") if isinstance(prediction, dict) else None
    if bboxes is None:
        return Parsed(labels)
    if not isinstance(bboxes, list) or len(bboxes) != len(labels):
        raise ResponseError(f"prediction has {len(labels)} labels but "
                            f"{len(bboxes) if isinstance(bboxes, list) else 'no list of'} "
                            f"bboxes")
    boxes = []
    for (label, score), box in zip(labels, bboxes):
        try:
            x_min, x_max, y_min, y_max = (float(v) for v in box)
        except (TypeError, ValueError):
            raise ResponseError(f"a bbox is not [xMin, xMax, yMin, yMax]: {_snippet(box)}")
        boxes.append({"label": label, "score": score, "x_min": x_min, "x_max": x_max,
                      "y_min": y_min, "y_max": y_max})
    boxes.sort(key=lambda b: -b["score"])
    return Parsed(labels, boxes)


def labels_from_prediction(prediction: Any, label_set: Sequence[str] = ()) -> Labels:
    """Labels and scores from one prediction in any of the common classification shapes.

    - Vertex classification: `{"displayNames": [...], "confidences": [...]}`
    - `{"labels": [...], "scores": [...]}` (also `classes`/`probabilities`)
    - `{"label": "x", "score": 0.9}`
    - a bare list of scores, or `{"scores": [...]}`, named by `label_set` (else by index)
    - a plain value: a class name or index with score 1.0, or a bare number as the score of
      the one `label_set` name (else of label "value")
    """
    if isinstance(prediction, dict):
        names = _first(prediction, "displayNames", "labels", "classes", "label")
        scores = _first(prediction, "confidences", "scores", "probabilities", "score")
        if isinstance(names, list) and isinstance(scores, list):
            if len(names) != len(scores):
                raise ResponseError(
                    f"prediction has {len(names)} labels but {len(scores)} scores")
            try:
                return [(str(n), float(s)) for n, s in zip(names, scores)]
            except (TypeError, ValueError):
                raise ResponseError(f"scores are not numbers: {_snippet(scores)}")
        if isinstance(scores, list):
            return _name_scores(scores, label_set)
        if names is not None and not isinstance(names, list):
            try:
                return [(str(names), float(scores) if scores is not None else 1.0)]
            except (TypeError, ValueError):
                raise ResponseError(f"score is not a number: {_snippet(prediction)}")
        raise ResponseError(f"cannot read labels from prediction: {_snippet(prediction)}")
    if isinstance(prediction, list):
        return _name_scores(prediction, label_set)
    if isinstance(prediction, (str, int)) and not isinstance(prediction, bool):
        if isinstance(prediction, int) and 0 <= prediction < len(label_set):
            return [(label_set[prediction], 1.0)]
        return [(str(prediction), 1.0)]
    if isinstance(prediction, float):
        return [(label_set[0] if len(label_set) == 1 else "value", prediction)]
    raise ResponseError(f"cannot read labels from prediction: {_snippet(prediction)}")


def _first(d: dict, *names):
    for name in names:
        if name in d:
            return d[name]
    return None


def _name_scores(scores: list, label_set: Sequence[str]) -> Labels:
    if label_set and len(label_set) != len(scores):
        raise ResponseError(
            f"prediction has {len(scores)} scores but --label_names names {len(label_set)}")
    try:
        values = [float(s) for s in scores]
    except (TypeError, ValueError):
        raise ResponseError(f"scores are not numbers: {_snippet(scores)}")
    names = label_set or [str(i) for i in range(len(values))]
    return list(zip(names, values))


def resource_name(endpoint: str) -> str:
    """`projects/p/models/m` out of a full `...:predict` URL (the endpoint itself otherwise)."""
    path = endpoint.split("://", 1)[-1]
    path = path.split("/", 1)[1] if "/" in path else path
    path = path.rsplit(":predict", 1)[0]
    match = re.search(r"(projects/.*)$", path)
    return match.group(1) if match else path


def _snippet(value: Any, limit: int = 200) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[:limit] + "..."
