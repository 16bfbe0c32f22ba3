"""The Google endpoint protocols: Cloud ML Engine / AI Platform `instances`, Vertex AI
endpoints and AutoML Vision v1beta1 (../../shared/PROTOCOLS.md has their wire facts)."""
import dataclasses
import re
from typing import Any, ClassVar, Dict, List, Optional, Tuple

from imaging.tensor import TensorSpec
from protocols.embedding import EmbeddingSpec, MULTIMODAL_FIELD, multimodal_dimension
from protocols.base import (b64, b64_json, dumps, error_message, INSTANCE_FORMATS, json_snippet,
                            parameters_field, Parsed, response_predictions, prediction_text,
                            Protocol, read_prediction, refused, ResponseError, sent_texts,
                            tensor_json)
from protocols.labels import (LabelError, Labels, LabelScores, LabelSpec, score, snippet,
                              unicode_labels)


@dataclasses.dataclass(frozen=True)
class MLEngine(Protocol):
    """Cloud ML Engine / AI Platform `{"instances": [...]}` with b64, named or tensor instances
    (nested lists; `{"NAME": [...]}` with a `tensor_input_name`, as TF Serving's named inputs)."""

    name: ClassVar[str] = "mlengine"
    instance_format: str = "b64"
    labels: LabelSpec = LabelSpec()
    keep_prediction: bool = True
    parameters: Dict[str, Any] = parameters_field()
    tensor: Optional[TensorSpec] = None
    tensor_input_name: str = ""
    embedding: EmbeddingSpec = EmbeddingSpec()

    def __post_init__(self):
        if self.instance_format not in INSTANCE_FORMATS or self.instance_format == "multimodal":
            raise ValueError(f"unknown instance format {self.instance_format!r}")
        if (self.instance_format == "tensor") != (self.tensor is not None):
            raise ValueError("--instance_format tensor needs --image_size WxH (and only "
                             "tensor instances take the tensor flags)")
        if self.tensor_input_name and self.tensor is None:
            raise ValueError("--tensor_input_name applies to --instance_format tensor")
        self.set_fields(parameters=dict(self.parameters or {}))

    def instance(self, key, data, mime_type, tensor=None):
        if self.tensor is not None:
            if tensor is None:
                raise ValueError("tensor instances need the image's tensor")
            body = tensor_json(tensor)
            if self.tensor_input_name:
                return b"{" + dumps(self.tensor_input_name) + b":" + body + b"}"
            return body
        if self.instance_format == "named":
            return dumps({"key": key, "image": {"b64": b64(data)}})
        return b'{"b64":' + b64_json(data) + b"}"

    def body_parts(self):
        return b'{"instances":[', _instances_suffix(self.parameters)

    def parse(self, response, count):
        predictions = response_predictions(response, count)
        return [read_prediction(p, self.labels, self.keep_prediction, sent=text,
                                vectors=self.embedding)
                for p, text in zip(predictions, sent_texts(predictions))]


@dataclasses.dataclass(frozen=True)
class Vertex(Protocol):
    """Vertex AI endpoint with `{content, mimeType}` image instances."""

    name: ClassVar[str] = "vertex"
    parameters: Dict[str, Any] = parameters_field()
    labels: LabelSpec = LabelSpec()
    keep_prediction: bool = True
    embedding: EmbeddingSpec = EmbeddingSpec()

    def __post_init__(self):
        self.set_fields(parameters=dict(self.parameters or {}))

    def instance(self, key, data, mime_type, tensor=None):
        return b'{"content":' + b64_json(data) + b',"mimeType":' + dumps(mime_type) + b"}"

    def body_parts(self):
        return b'{"instances":[', _instances_suffix(self.parameters)

    def parse(self, response, count):
        predictions = response_predictions(response, count)
        return [parse_vertex_prediction(p, self.labels, self.keep_prediction, text,
                                        self.embedding)
                for p, text in zip(predictions, sent_texts(predictions))]


MULTIMODAL_FORMATS = ("BMP", "GIF", "JPEG", "PNG")
MULTIMODAL_MAX_IMAGE_BYTES = 20 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Multimodal(Protocol):
    """Vertex AI multimodal embeddings (`publishers/google/models/multimodalembedding@...`):
    one `{"image": {"bytesBase64Encoded"}}` instance a request, or `{"image": {"gcsUri"}}`
    for a gs:// input with `send_uri` (its bytes never read); `parameters` such as
    `{"dimension": 512}`; the answer's `predictions[0].imageEmbedding` is the vector."""

    name: ClassVar[str] = "vertex"
    max_instances: ClassVar[Optional[int]] = 1
    image_formats: ClassVar[Optional[Tuple[str, ...]]] = MULTIMODAL_FORMATS
    max_image_bytes: ClassVar[Optional[int]] = MULTIMODAL_MAX_IMAGE_BYTES
    parameters: Dict[str, Any] = parameters_field()
    keep_prediction: bool = True
    embedding: EmbeddingSpec = EmbeddingSpec(MULTIMODAL_FIELD)
    send_uri: bool = False

    def __post_init__(self):
        parameters = dict(self.parameters or {})
        vectors = self.embedding
        if vectors.field is None:
            vectors = vectors._replace(field=MULTIMODAL_FIELD)
        if vectors.dimension is None:
            vectors = vectors._replace(dimension=multimodal_dimension(parameters))
        self.set_fields(parameters=parameters, embedding=vectors)

    def instance(self, key, data, mime_type, tensor=None):
        return b'{"image":{"bytesBase64Encoded":' + b64_json(data) + b"}}"

    def uri_instance(self, key, uri):
        if self.send_uri and uri.startswith("gs://"):
            return b'{"image":{"gcsUri":' + dumps(uri) + b"}}"
        return None

    def body_parts(self):
        return b'{"instances":[', _instances_suffix(self.parameters)

    def parse(self, response, count):
        predictions = response_predictions(response, count)
        return [read_prediction(p, LabelSpec(), self.keep_prediction, sent=text,
                                vectors=self.embedding)
                for p, text in zip(predictions, sent_texts(predictions))]


def is_multimodal_endpoint(endpoint: str) -> bool:
    """A Vertex publisher URL of the multimodal embeddings model."""
    path = endpoint.split("?", 1)[0]
    return re.search(r"/publishers/google/models/multimodalembedding(@[^/:]+)?:predict$",
                     path) is not None


@dataclasses.dataclass(frozen=True)
class AutoML(Protocol):
    """AutoML Vision v1beta1: one image per request as `payload.image.imageBytes`."""

    name: ClassVar[str] = "automl"
    max_instances: ClassVar[Optional[int]] = 1
    score_threshold: Optional[float] = None
    keep_prediction: bool = True

    def instance(self, key, data, mime_type, tensor=None):
        return b'{"image":{"imageBytes":' + b64_json(data) + b"}}"

    def body_parts(self):
        suffix = b"}"
        if self.score_threshold is not None:
            suffix = b',"params":' + dumps({"score_threshold": str(self.score_threshold)}) + b"}"
        return b'{"payload":', suffix

    def parse(self, response, count):
        if count != 1:
            raise ResponseError(f"AutoML answers one image per request, not {count}")
        message = error_message(response)
        if message is not None:
            raise ResponseError(message)
        if not isinstance(response, dict) or not isinstance(response.get("payload", []), list):
            raise ResponseError(f"unexpected AutoML response: {json_snippet(response)}")
        payload = response.get("payload", [])
        try:
            labels = unicode_labels(LabelScores([automl_label(item) for item in payload])).labels
            text = prediction_text(payload) if self.keep_prediction else None
        except LabelError as e:
            return [refused(str(e))]
        return [Parsed(labels, prediction=text)]


def automl_label(item: Any) -> Tuple[str, float]:
    """One AutoML payload item: `{displayName, classification: {score}}`."""
    try:
        name, value = item["displayName"], item["classification"]["score"]
    except (KeyError, TypeError):
        raise LabelError(f"unexpected AutoML payload item: {snippet(item)}")
    if not isinstance(name, str):
        raise LabelError(f"AutoML displayName {snippet(name)} is not a name")
    return name, score(value)


def _instances_suffix(parameters: dict) -> bytes:
    if parameters:
        return b'],"parameters":' + dumps(parameters) + b"}"
    return b"]}"


def parse_vertex_prediction(prediction: Any, labels: LabelSpec = LabelSpec(),
                            keep_prediction: bool = True, sent: Optional[str] = None,
                            vectors: EmbeddingSpec = EmbeddingSpec()) -> Parsed:
    """A Vertex prediction: classification labels, plus boxes for object detection (and
    its vector, when `vectors` says where it is)."""
    parsed = read_prediction(prediction, labels, keep_prediction, sent=sent, vectors=vectors)
    bboxes = prediction.get("bboxes") if isinstance(prediction, dict) else None
    if parsed.error is not None or bboxes is None:
        return parsed
    try:
        return parsed._replace(boxes=detection_boxes(parsed.labels, bboxes))
    except LabelError as e:
        return refused(str(e))


def detection_boxes(labels: Labels, bboxes: Any) -> List[dict]:
    """Vertex `bboxes` ([xMin, xMax, yMin, yMax] per label) as BOX_TYPE dicts, score first."""
    if not isinstance(bboxes, list) or len(bboxes) != len(labels):
        raise LabelError(f"prediction has {len(labels)} labels but "
                         f"{len(bboxes) if isinstance(bboxes, list) else 'no list of'} bboxes")
    boxes = []
    for (label, value), box in zip(labels, bboxes):
        if not isinstance(box, list) or len(box) != 4:
            raise LabelError(f"a bbox is not [xMin, xMax, yMin, yMax]: {snippet(box)}")
        x_min, x_max, y_min, y_max = (score(v) for v in box)
        boxes.append({"label": label, "score": value, "x_min": x_min, "x_max": x_max,
                      "y_min": y_min, "y_max": y_max})
    boxes.sort(key=lambda b: -b["score"])
    return boxes
