"""Local prediction server speaking ML Engine, AutoML v1beta1, Vertex AI and v2 (KServe).

One aiohttp application answers all three wire formats (the client side of each is
:mod:`protocols.base`) with one classifier object from
:mod:`localserver.classifiers` (``--model``: the deterministic colour model,
EfficientNet-Lite0 or a user's ONNX file), and can simulate the unpleasant parts of a real
service: latency, limited capacity, a QPS quota, injected 429/503 errors and
abrupt connection resets. Counters at ``GET /stats`` let tests and benchmarks
see what the server actually received.

Routes (predict routes match on the path *suffix*, under any prefix):

* ``POST .../models/{model}[/versions/{v}]:predict`` -- ML Engine when the
  body has ``instances``, AutoML v1beta1 when it has ``payload``.
* ``POST .../endpoints/{endpoint}:predict`` -- Vertex AI.
* ``POST .../endpoints/{endpoint}:rawPredict`` -- Vertex AI raw predict: ML Engine
  ``instances`` or a v2 infer body, answered with ``X-Vertex-AI-Deployed-Model-id``.
* ``/v2/...`` -- the Open Inference Protocol (see :mod:`localserver.v2`).
* ``POST .../publishers/google/models/multimodalembedding@001:predict`` -- Vertex AI multimodal
  embeddings, one image per request (see :mod:`localserver.embeddings`).
* ``GET /stats``, ``POST /stats/reset``, ``GET|POST /config``, ``GET /healthz``.

Order of events for a predict request: arrival (counted in ``in_flight``),
body read, bearer token check (401, only with ``--bearer_token``), quota check (429 + ``Retry-After: 1``), injected fault draw
(reset / 503 / 429 + ``Retry-After: 0``), body size limit, JSON parse,
capacity slot + latency, classification of the request's images as one batch (in a worker
thread, so a slow model does not stall the event loop), response.
"""

import argparse
import asyncio
import base64
import binascii
import dataclasses
import functools
import json
import logging
import random
import re
import signal
import socket
import struct
import sys
import threading
import time
import typing
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from aiohttp import web

import localserver
from localserver import classifiers, embeddings, model, v2

DEFAULT_HOST = "127.0.0.1"
DEFAULT_MAX_BODY_BYTES = 1572864
#: aiohttp's own cap on bodies; far above ours so that the limit check is ours.
CLIENT_MAX_SIZE = 64 * 1024 * 1024
DEPLOYED_MODEL_ID = "local-color-1"
#: Seconds aiohttp waits for in-flight handlers on shutdown, once to let them
#: finish and once more after cancelling them; keeps SIGTERM exits quick.
SHUTDOWN_TIMEOUT = 0.5

STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "INVALID_ARGUMENT",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

MODEL_PREDICT_PATH = re.compile(r"/models/[^/:]+(?:/versions/[^/:]+)?:predict$")
ENDPOINT_PREDICT_PATH = re.compile(r"/endpoints/[^/:]+:predict$")
RAW_PREDICT_PATH = re.compile(r"/endpoints/[^/:]+:rawPredict$")

MODELS_ROUTE = "models"  # ML Engine or AutoML, told apart by the body
ENDPOINTS_ROUTE = "endpoints"  # Vertex AI
V2_ROUTE = "v2"  # Open Inference Protocol
RAW_ROUTE = "raw"  # Vertex :rawPredict: the body as the model takes it (v1 instances or v2)
MULTIMODAL_ROUTE = "multimodal"  # Vertex multimodal embeddings (a publisher model)

FAULT_RESET = "reset"
FAULT_503 = "503"
FAULT_429 = "429"


# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Config:
    """Runtime switches; names match the CLI flags and ``POST /config`` keys."""

    latency_ms: float = 0.0
    capacity: int = 64
    quota_qps: float = 0.0
    fail_429_rate: float = 0.0
    fail_503_rate: float = 0.0
    reset_rate: float = 0.0
    seed: int = 0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    model_name: str = "local-color-classifier"
    bearer_token: str = ""
    name_instances: int = 1
    constant: int = 0
    v2_model_ready: int = 1
    v2_input_datatype: str = "BYTES"
    v2_outputs: str = "labels_scores"
    embeddings: int = 0
    constant_embedding: int = 0
    read_gcs: int = 1

    def validate(self) -> None:
        """Raise ``ValueError`` if any switch is out of range."""
        if self.latency_ms < 0:
            raise ValueError("latency_ms must be >= 0")
        if self.capacity < 1:
            raise ValueError("capacity must be >= 1")
        if self.quota_qps < 0:
            raise ValueError("quota_qps must be >= 0 (0 disables the quota)")
        for name in ("fail_429_rate", "fail_503_rate", "reset_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.max_body_bytes < 0:
            raise ValueError("max_body_bytes must be >= 0")
        if self.constant < 0:
            raise ValueError("constant must be >= 0 (0 = off)")
        if not self.model_name:
            raise ValueError("model_name must not be empty")
        if self.v2_input_datatype not in ("BYTES", "UINT8", "FP32"):
            raise ValueError("v2_input_datatype must be BYTES, UINT8 or FP32")
        if self.v2_outputs not in v2.OUTPUT_MODES:
            raise ValueError(f"v2_outputs must be one of {', '.join(v2.OUTPUT_MODES)}")
        if self.embeddings not in (0, 1) or self.read_gcs not in (0, 1):
            raise ValueError("embeddings and read_gcs must be 0 or 1")
        if self.constant_embedding < 0:
            raise ValueError("constant_embedding must be >= 0 (0 = off)")
        if self.constant and self.constant_embedding:
            raise ValueError("constant and constant_embedding cannot both be on")


CONFIG_HELP = {
    "latency_ms": "added latency per predict request, spent holding a capacity slot",
    "capacity": "concurrent processing slots; further requests wait for a slot",
    "quota_qps": "quota in requests per calendar second, counted strictly (0 = off); "
                 "over it -> 429",
    "fail_429_rate": "probability of an injected 429 (Retry-After: 0)",
    "fail_503_rate": "probability of an injected 503",
    "reset_rate": "probability of abruptly resetting the TCP connection",
    "seed": "seed of the random generator that draws injected faults",
    "max_body_bytes": "largest accepted request body in bytes",
    "model_name": "model name reported in responses",
    "bearer_token": "when set, predict requests need 'Authorization: Bearer <it>', else 401",
    "name_instances": "1: error messages name the failing instance; 0: they do not",
    "constant": "0: off (the model answers); 1: every ML Engine instance gets one fixed "
                "label; N > 1: N fixed unnamed scores, like an ImageNet classifier's softmax "
                "(1000); instances are not decoded (benchmarks)",
    "v2_model_ready": "1: the v2 model reports ready; 0: its ready route answers 503",
    "v2_input_datatype": "datatype of the v2 model's input in its metadata (BYTES, UINT8, FP32)",
    "v2_outputs": "v2 outputs: labels_scores (ranked labels and scores) or scores (FP32 "
                  "[n, 8] in label order)",
    "embeddings": "1 (or the bare flag): ML Engine, Vertex and :rawPredict predictions carry "
                  "the model's \"embedding\" (a list of floats) beside their labels, and the "
                  "v2 model has a last output, embedding FP32 [-1, d]; needs a model with an "
                  "embedding output (--model efficientnet_lite0: 1,280 pooled features); "
                  "the multimodal route is served either way",
    "constant_embedding": "N > 0: every embedding is one fixed vector of N floats, no image "
                          "decoded and no model run (benchmarks): ML Engine and Vertex "
                          "predictions are {\"embedding\": [...]}, the v2 model's one output is "
                          "embedding FP32 [-1, N], multimodal answers the fixed vector of the "
                          "requested dimension; 0: off",
    "read_gcs": "1: a multimodal gcsUri image is read through STORAGE_EMULATOR_HOST when that "
                "is set; 0 (or no emulator): its vector is derived from the URI",
}

#: Switches that also work as a bare flag (``--embeddings`` = ``--embeddings 1``).
FLAG_SWITCHES = ("embeddings",)


def config_types() -> Dict[str, type]:
    """Map each switch name to its Python type (int, float or str)."""
    return typing.get_type_hints(Config)


def coerce_switch(name: str, kind: type, raw: Any) -> Any:
    """Convert a JSON or CLI value for switch ``name`` to ``kind``."""
    if kind is str:
        if not isinstance(raw, str):
            raise ValueError(f"{name} must be a string")
        return raw
    if isinstance(raw, bool):
        raise ValueError(f"{name} must be a number, not a boolean")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if kind is int:
        if value != int(value):
            raise ValueError(f"{name} must be an integer, got {raw!r}")
        return int(value)
    return value


def updated_config(config: Config, changes: Mapping[str, Any]) -> Config:
    """Return ``config`` with ``changes`` applied and validated."""
    types = config_types()
    unknown = sorted(set(changes) - set(types))
    if unknown:
        raise ValueError(f"unknown switch(es): {', '.join(unknown)}")
    values = {name: coerce_switch(name, types[name], raw) for name, raw in changes.items()}
    new = dataclasses.replace(config, **values)
    new.validate()
    return new


# --------------------------------------------------------------------------
# Counters, quota and fault injection
# --------------------------------------------------------------------------


@dataclasses.dataclass
class Stats:
    """Counters served at ``GET /stats``."""

    requests: int = 0
    responses_by_status: Dict[str, int] = dataclasses.field(default_factory=dict)
    instances: int = 0
    predicted: int = 0
    max_request_bytes: int = 0
    request_bytes: int = 0  # all predict bodies, in total
    max_request_instances: int = 0
    max_in_flight: int = 0
    in_flight: int = 0
    quota_429: int = 0
    injected_429: int = 0
    injected_503: int = 0
    injected_resets: int = 0
    gcs_reads: int = 0  # multimodal gcsUri images read through the storage emulator
    per_second: Dict[int, int] = dataclasses.field(default_factory=dict)
    started_at: float = dataclasses.field(default_factory=time.time)

    def enter(self) -> None:
        """A predict request arrived."""
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self) -> None:
        """A predict request is done (answered or reset)."""
        self.in_flight -= 1

    def count_status(self, status: int) -> None:
        key = str(status)
        self.responses_by_status[key] = self.responses_by_status.get(key, 0) + 1

    def count_admitted(self, now: float) -> None:
        second = int(now)
        self.per_second[second] = self.per_second.get(second, 0) + 1

    def count_instances(self, count: int) -> None:
        self.instances += count
        self.max_request_instances = max(self.max_request_instances, count)

    def reset(self) -> "Stats":
        """Fresh counters; the ``in_flight`` gauge carries over."""
        return Stats(in_flight=self.in_flight, max_in_flight=self.in_flight)

    def to_json(self) -> Dict[str, Any]:
        data = dataclasses.asdict(self)
        data["per_second"] = {str(k): v for k, v in sorted(self.per_second.items())}
        return data


class SecondQuota:
    """At most ``limit`` requests per calendar second (``int(time.time())``), counted
    strictly: the ``limit + 1``-th arrival within one second is refused, however the
    earlier ones were spread."""

    def __init__(self, limit: float, clock: Callable[[], float] = time.time):
        self.limit = limit
        self.clock = clock
        self.second: Optional[int] = None
        self.admitted = 0

    def try_acquire(self) -> bool:
        """Count one arrival if this second has room for it."""
        second = int(self.clock())
        if second != self.second:
            self.second, self.admitted = second, 0
        if self.admitted + 1 > self.limit:
            return False
        self.admitted += 1
        return True


def draw_fault(rng: random.Random, config: Config) -> Optional[str]:
    """Draw at most one injected fault for a request.

    Exactly one uniform number is drawn per call, so the fault sequence only
    depends on the seed and the number of admitted requests. The rates are
    stacked (reset, then 503, then 429), so each is its own probability as long
    as they sum to at most 1.
    """
    draw = rng.random()
    for fault, rate in (
        (FAULT_RESET, config.reset_rate),
        (FAULT_503, config.fail_503_rate),
        (FAULT_429, config.fail_429_rate),
    ):
        if draw < rate:
            return fault
        draw -= rate
    return None


class ServerState:
    """Everything mutable the handlers share: config, counters, slots, quota, RNG."""

    def __init__(self, config: Config, classifier=None):
        self.config = config
        self.classifier = classifier or classifiers.ColourClassifier()
        check_embeddings(config, self.classifier)
        self.stats = Stats()
        self.stats_lock = threading.Lock()
        self.slots = asyncio.Semaphore(config.capacity)
        self.quota = make_quota(config.quota_qps)
        self.rng = random.Random(config.seed)

    def configure(self, changes: Mapping[str, Any]) -> Config:
        """Apply runtime switch changes.

        Passing ``quota_qps`` starts a fresh quota count, passing ``seed`` re-seeds the
        fault generator, and a new ``capacity`` applies to requests that arrive
        after the change.
        """
        old = self.config
        new = updated_config(old, changes)
        check_embeddings(new, self.classifier)
        self.config = new
        if self.config.capacity != old.capacity:
            self.slots = asyncio.Semaphore(self.config.capacity)
        if "quota_qps" in changes:
            self.quota = make_quota(self.config.quota_qps)
        if "seed" in changes:
            self.rng = random.Random(self.config.seed)
        return self.config

    def admit(self) -> bool:
        """Quota check; True if the request may proceed."""
        return self.quota is None or self.quota.try_acquire()

    def count_gcs_read(self) -> None:
        """One gcsUri image read (called from the model's worker threads)."""
        with self.stats_lock:
            self.stats.gcs_reads += 1


def check_embeddings(config: Config, classifier) -> None:
    """``ValueError`` when ``--embeddings 1`` asks for vectors the model cannot give."""
    if config.embeddings and not config.constant_embedding and classifier.embedding_size is None:
        raise ValueError(f"--embeddings 1 needs a model with an "
                         f"{classifiers.EMBEDDING_OUTPUT!r} output (--model "
                         f"{classifiers.EFFICIENTNET_LITE0}) or --constant_embedding N; "
                         f"{classifier.name} has none")


def embedding_width(config: Config, classifier) -> int:
    """The length of the vectors the instance protocols and v2 answer (0: none)."""
    if config.constant_embedding:
        return config.constant_embedding
    return classifier.embedding_size if config.embeddings else 0


def make_quota(quota_qps: float) -> Optional[SecondQuota]:
    return SecondQuota(quota_qps) if quota_qps > 0 else None


STATE = web.AppKey("state", ServerState)


# --------------------------------------------------------------------------
# Responses and request parsing helpers
# --------------------------------------------------------------------------


class BadRequest(Exception):
    """A request to answer with a Google-style error."""

    def __init__(self, message: str, code: int = 400):
        super().__init__(message)
        self.code = code
        self.message = message


def google_error_body(code: int, message: str) -> Dict[str, Any]:
    """``{"error": {"code", "message", "status"}}`` as Google APIs return it."""
    status = STATUS_NAMES.get(code, "UNKNOWN")
    return {"error": {"code": code, "message": message, "status": status}}


def google_error(code: int, message: str,
                 headers: Optional[Mapping[str, str]] = None) -> web.Response:
    """A JSON response carrying :func:`google_error_body`."""
    return web.json_response(google_error_body(code, message), status=code, headers=headers)


def v2_error(code: int, message: str,
             headers: Optional[Mapping[str, str]] = None) -> web.Response:
    """An Open Inference Protocol error: ``{"error": "message"}``."""
    return web.json_response({"error": message}, status=code, headers=headers)


def decode_base64(text: Any) -> bytes:
    """Decode standard or URL-safe base64, tolerating whitespace and missing padding."""
    if not isinstance(text, str):
        raise ValueError(f"base64 data must be a string, got {type(text).__name__}")
    compact = "".join(text.split()).replace("-", "+").replace("_", "/")
    compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"invalid base64 data: {exc}") from None


def parse_json_object(body: bytes) -> Dict[str, Any]:
    """Parse a request body that must be a JSON object."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"Invalid JSON payload received. {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("Invalid JSON payload received. Expected a JSON object.")
    return data


def parse_number(value: Any, name: str) -> float:
    """A number given as JSON number or numeric string."""
    if isinstance(value, bool):
        raise BadRequest(f"Invalid value for {name}: {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise BadRequest(f"Invalid value for {name}: {value!r}") from None


def size_limit_message(limit: int) -> str:
    return f"Request payload size exceeds the limit: {limit} bytes."


# --------------------------------------------------------------------------
# The three protocols: parse (cheap, before the slot) and run (classify)
# --------------------------------------------------------------------------

#: A parsed request: (instance count, function returning (status, body, predicted)).
Job = Tuple[int, Callable[[], Tuple[int, Dict[str, Any], int]]]


def image_value(value: Any):
    """The Pillow image of an ML Engine image value: ``{"b64": ...}`` or an RGB tensor."""
    if isinstance(value, dict) and "b64" in value:
        return classifiers.decode_image(decode_base64(value["b64"]))
    if isinstance(value, list):
        return model.array_to_image(value)
    raise ValueError(f"unsupported image value of type {type(value).__name__}; "
                     "expected {\"b64\": ...} or an H x W x 3 list")


def labels_and_scores(ranked: model.Prediction) -> Dict[str, List]:
    return {"labels": [label for label, _ in ranked], "scores": [score for _, score in ranked]}


def mlengine_image(instance: Any):
    """The image of one ML Engine instance (raises ``ValueError``)."""
    if isinstance(instance, list):
        return model.array_to_image(instance)
    if not isinstance(instance, dict):
        raise ValueError(f"unsupported instance of type {type(instance).__name__}")
    if set(instance) == {"b64"}:
        return image_value(instance)
    if "image" not in instance:
        raise ValueError("named-input instance has no 'image' input")
    return image_value(instance["image"])


def mlengine_prediction(instance: Any, ranked: model.Prediction) -> Dict[str, Any]:
    """One ML Engine prediction; a named-input instance's other inputs are echoed."""
    echoed = ({name: value for name, value in instance.items() if name != "image"}
              if isinstance(instance, dict) and set(instance) != {"b64"} else {})
    return {**echoed, **labels_and_scores(ranked)}


def decoded_images(values: List[Any], to_image: Callable[[Any], Any]) -> List[Any]:
    """Every value's image; the first bad one raises ``classifiers.BadImage``."""
    images = []
    for index, value in enumerate(values):
        try:
            images.append(to_image(value))
        except ValueError as exc:
            raise classifiers.BadImage(index, str(exc)) from None
    return images


def with_embeddings(predictions: List[Dict[str, Any]], vectors) -> List[Dict[str, Any]]:
    """Each prediction with its image's ``embedding`` (when there are ``vectors``)."""
    if vectors is None:
        return predictions
    return [{**one, "embedding": row.tolist()} for one, row in zip(predictions, vectors)]


def run_mlengine(instances: List[Any], classifier, name_instances: bool = True,
                 embed: bool = False) -> Tuple[int, Dict[str, Any], int]:
    """Predict every instance in one batch; any failure fails the whole request."""
    try:
        inference = classifier.infer(decoded_images(instances, mlengine_image), embed)
    except classifiers.BadImage as exc:
        where = f"instance {exc.index}: " if name_instances else ""
        return 400, {"error": f"Prediction failed: {where}{exc.reason}"}, 0
    predictions = [mlengine_prediction(instance, one)
                   for instance, one in zip(instances, inference.ranked)]
    return 200, {"predictions": with_embeddings(predictions, inference.embeddings)}, \
        len(predictions)


#: The answer of ``--constant 1`` to every ML Engine instance.
CONSTANT_PREDICTION = {"labels": [model.LABELS[0]], "scores": [1.0]}


def run_constant(count: int, scores: int = 1) -> Tuple[int, Any, int]:
    """The same prediction for each of ``count`` instances, none of them looked at: one
    label, or a vector of ``scores`` > 1 unnamed scores (its JSON text made once)."""
    if scores == 1:
        return 200, {"predictions": [CONSTANT_PREDICTION] * count}, count
    body = b'{"predictions":[' + b",".join([constant_scores(scores)] * count) + b"]}"
    return 200, (body, None), count


@functools.lru_cache(maxsize=4)
def constant_scores(count: int) -> bytes:
    """The JSON text of ``count`` fixed scores that sum to 1, the first the largest."""
    weights = [1.0 / (i + 2) for i in range(count)]
    total = sum(weights)
    return json.dumps([w / total for w in weights]).encode()


def run_constant_embedding(count: int, size: int,
                           extra: Optional[Dict[str, Any]] = None) -> Tuple[int, Any, int]:
    """``{"embedding": <the constant vector>}`` for each of ``count`` instances, none of them
    looked at (the JSON text of the vector made once), then ``extra``'s fields."""
    one = b'{"embedding":' + embeddings.constant_vector_json(size) + b"}"
    tail = b"," + json.dumps(extra)[1:-1].encode() if extra else b""
    return 200, (b'{"predictions":[' + b",".join([one] * count) + b"]" + tail + b"}",
                 None), count


def parse_mlengine(body: Dict[str, Any], classifier, name_instances: bool = True,
                   constant: int = 0, embed: bool = False, constant_embedding: int = 0) -> Job:
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise BadRequest("Invalid JSON payload: 'instances' must be a non-empty list.")
    if constant:
        return len(instances), lambda: run_constant(len(instances), constant)
    if constant_embedding:
        return len(instances), lambda: run_constant_embedding(len(instances),
                                                              constant_embedding)
    return len(instances), lambda: run_mlengine(instances, classifier, name_instances, embed)


def run_automl(image_b64: Any, threshold: float,
               classifier) -> Tuple[int, Dict[str, Any], int]:
    try:
        ranked = classifier.predict([decode_base64(image_b64)])[0]
    except ValueError as exc:
        return 400, google_error_body(400, f"Invalid image content: {exc}"), 0
    payload = [
        {"displayName": label, "classification": {"score": score}}
        for label, score in ranked
        if score >= threshold
    ]
    return 200, {"payload": payload}, 1


def parse_automl(body: Dict[str, Any], classifier) -> Job:
    payload = body["payload"]
    image = payload.get("image") if isinstance(payload, dict) else None
    if not isinstance(image, dict) or "imageBytes" not in image:
        raise BadRequest("Invalid JSON payload: expected payload.image.imageBytes.")
    params = body.get("params") or {}
    if not isinstance(params, dict):
        raise BadRequest("Invalid JSON payload: 'params' must be an object.")
    threshold = parse_number(params.get("score_threshold", 0.5), "params.score_threshold")
    return 1, lambda: run_automl(image["imageBytes"], threshold, classifier)


def vertex_image(instance: Any):
    """The image of one Vertex instance (raises ``ValueError``)."""
    if not isinstance(instance, dict) or "content" not in instance:
        raise ValueError("expected an object with a 'content' field")
    return classifiers.decode_image(decode_base64(instance["content"]))


def vertex_prediction(ranked: model.Prediction, threshold: float, limit: int,
                      labels: Sequence[str]) -> Dict[str, List]:
    """One Vertex classification prediction."""
    kept = [(label, score) for label, score in ranked if score >= threshold][:limit]
    return {
        "ids": [str(labels.index(label)) for label, _ in kept],
        "displayNames": [label for label, _ in kept],
        "confidences": [score for _, score in kept],
    }


def vertex_model_fields(model_name: str) -> Dict[str, str]:
    """The fields a Vertex answer carries beside its predictions."""
    return {
        "deployedModelId": DEPLOYED_MODEL_ID,
        "model": f"projects/local/locations/local/models/{model_name}",
        "modelDisplayName": model_name,
    }


def run_vertex(instances: List[Any], threshold: float, limit: int, model_name: str,
               classifier, name_instances: bool = True,
               embed: bool = False) -> Tuple[int, Dict[str, Any], int]:
    try:
        inference = classifier.infer(decoded_images(instances, vertex_image), embed)
    except classifiers.BadImage as exc:
        where = f" at instances[{exc.index}]" if name_instances else ""
        message = f"Invalid image content{where}: {exc.reason}"
        return 400, google_error_body(400, message), 0
    predictions = [vertex_prediction(one, threshold, limit, classifier.labels)
                   for one in inference.ranked]
    body = {"predictions": with_embeddings(predictions, inference.embeddings),
            **vertex_model_fields(model_name)}
    return 200, body, len(predictions)


def parse_vertex(body: Dict[str, Any], model_name: str, classifier,
                 name_instances: bool = True, embed: bool = False,
                 constant_embedding: int = 0) -> Job:
    instances = body.get("instances")
    if not isinstance(instances, list) or not instances:
        raise BadRequest("Invalid JSON payload: 'instances' must be a non-empty list.")
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("Invalid JSON payload: 'parameters' must be an object.")
    threshold = parse_number(parameters.get("confidenceThreshold", 0.0),
                             "parameters.confidenceThreshold")
    limit = parse_number(parameters.get("maxPredictions", len(classifier.labels)),
                         "parameters.maxPredictions")
    if limit < 1 or limit != int(limit):
        raise BadRequest("Invalid value for parameters.maxPredictions: must be a positive integer.")
    if constant_embedding:
        return len(instances), lambda: run_constant_embedding(
            len(instances), constant_embedding, vertex_model_fields(model_name))
    return len(instances), lambda: run_vertex(instances, threshold, int(limit), model_name,
                                              classifier, name_instances, embed)


def v2_model(config: Config, classifier) -> v2.Model:
    """What the v2 model's metadata and answers show of the server's model and switches."""
    return v2.Model(config.model_name, config.v2_input_datatype, config.v2_outputs,
                    tuple(classifier.labels), embedding_width(config, classifier),
                    bool(config.constant_embedding))


def parse_v2(raw: bytes, headers: Mapping[str, str], config: Config, classifier) -> Job:
    """A v2 infer request as a job whose answer may carry binary outputs."""
    served = v2_model(config, classifier)
    try:
        request, tail = v2.split_body(raw, headers)
        images = v2.read_images(request, tail)
        outputs = v2.requested_outputs(request, served)
        keep = v2.top_k(request)
    except v2.V2Error as exc:
        raise BadRequest(exc.message, exc.code) from None

    if served.constant:
        return len(images), lambda: (200, v2.constant_answer(len(images), outputs, served),
                                     len(images))

    def run() -> Tuple[int, Any, int]:
        status, header, binary = v2.run(images, outputs, served, classifier,
                                        bool(config.name_instances), keep)
        return status, v2.answer_parts(header, binary), len(images) if status == 200 else 0
    return len(images), run


def run_multimodal(request: embeddings.MultimodalRequest, config: Config, classifier,
                   on_read: Callable[[], None]) -> Tuple[int, Any, int]:
    """One multimodal instance's answer (the constant vector, or the model's, projected)."""
    if config.constant_embedding:
        return 200, embeddings.answer(embeddings.constant_vector(request.dimension)), 1
    try:
        vector = embeddings.embed_multimodal(request, classifier, classifiers.decode_image,
                                             bool(config.read_gcs), on_read)
    except embeddings.EmbeddingError as exc:
        return exc.code, google_error_body(exc.code, exc.message), 0
    return 200, embeddings.answer(vector), 1


def parse_multimodal(body: Dict[str, Any], config: Config, classifier,
                     on_read: Callable[[], None]) -> Job:
    """A multimodal embeddings request (one instance) as a job."""
    if not config.constant_embedding and classifier.embedding_size is None:
        raise BadRequest(f"Publisher model multimodalembedding is not served: {classifier.name} "
                         f"has no embedding; start the local server with --model "
                         f"{classifiers.EFFICIENTNET_LITE0} or --constant_embedding N.", 404)
    try:
        request = embeddings.parse_multimodal(body)
    except embeddings.EmbeddingError as exc:
        raise BadRequest(exc.message, exc.code) from None
    return 1, lambda: run_multimodal(request, config, classifier, on_read)


def parse_predict(route: str, raw: bytes, config: Config, classifier,
                  headers: Mapping[str, str] = None,
                  on_read: Callable[[], None] = lambda: None) -> Job:
    """Parse a predict body for ``route`` into a job (raises ``BadRequest``); ``on_read`` is
    called for each gcsUri image the job reads."""
    headers = headers or {}
    if route == V2_ROUTE or (route == RAW_ROUTE and v2.HEADER_LENGTH in headers):
        return parse_v2(raw, headers, config, classifier)
    body = parse_json_object(raw)
    if route == MULTIMODAL_ROUTE:
        return parse_multimodal(body, config, classifier, on_read)
    if route == RAW_ROUTE and "inputs" in body:
        return parse_v2(raw, headers, config, classifier)
    embed = bool(config.embeddings)
    if route == ENDPOINTS_ROUTE:
        return parse_vertex(body, config.model_name, classifier, bool(config.name_instances),
                            embed, config.constant_embedding)
    if "instances" in body:
        return parse_mlengine(body, classifier, bool(config.name_instances), config.constant,
                              embed, config.constant_embedding)
    if "payload" in body:
        return parse_automl(body, classifier)
    raise BadRequest("Invalid JSON payload: expected 'instances' (ML Engine) "
                     "or 'payload' (AutoML).")


# --------------------------------------------------------------------------
# Handlers
# --------------------------------------------------------------------------


def reset_connection(request: web.Request) -> None:
    """Close the client's TCP connection abruptly (RST, no HTTP response).

    SO_LINGER with a zero timeout makes the kernel send a RST instead of a FIN
    when the socket closes; ``transport.abort()`` closes it without flushing.
    """
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def read_body(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BadRequest(size_limit_message(CLIENT_MAX_SIZE), code=413) from None


async def predict(request: web.Request, route: str) -> Optional[web.Response]:
    """Run one predict request through quota, faults, limits and the model.

    Returns the response, or None when the connection was reset.
    """
    state = request.app[STATE]
    fail = v2_error if route == V2_ROUTE else google_error
    try:
        raw = await read_body(request)
    except BadRequest as exc:
        return fail(exc.code, exc.message)
    state.stats.max_request_bytes = max(state.stats.max_request_bytes, len(raw))
    state.stats.request_bytes += len(raw)

    token = state.config.bearer_token
    if token and request.headers.get("Authorization") != f"Bearer {token}":
        return fail(401, "Request had invalid authentication credentials.")

    if not state.admit():
        state.stats.quota_429 += 1
        message = (f"Quota exceeded for online prediction requests "
                   f"({state.config.quota_qps:g} per second).")
        return fail(429, message, headers={"Retry-After": "1"})
    state.stats.count_admitted(time.time())

    fault = draw_fault(state.rng, state.config)
    if fault == FAULT_RESET:
        state.stats.injected_resets += 1
        reset_connection(request)
        return None
    if fault == FAULT_503:
        state.stats.injected_503 += 1
        return fail(503, "The service is currently unavailable (injected fault).")
    if fault == FAULT_429:
        state.stats.injected_429 += 1
        return fail(429, "Resource has been exhausted (injected fault).",
                            headers={"Retry-After": "0"})

    config = state.config
    if len(raw) > config.max_body_bytes:
        return fail(400, size_limit_message(config.max_body_bytes))
    try:
        count, run = parse_predict(route, raw, config, state.classifier, request.headers,
                                   state.count_gcs_read)
    except BadRequest as exc:
        return fail(exc.code, exc.message)
    state.stats.count_instances(count)

    async with state.slots:
        if config.latency_ms > 0:
            await asyncio.sleep(config.latency_ms / 1000.0)
        status, body, predicted = await asyncio.to_thread(run)
    state.stats.predicted += predicted
    extra = {"X-Vertex-AI-Deployed-Model-id": DEPLOYED_MODEL_ID} if route == RAW_ROUTE else {}
    if isinstance(body, tuple):  # an answer's own bytes (v2, constant scores), binary header
        raw_body, headers = body
        return web.Response(body=raw_body, status=status, headers={**(headers or {}), **extra},
                            content_type="application/json" if not headers
                            else "application/octet-stream")
    return web.json_response(body, status=status, headers=extra)


async def handle_predict(request: web.Request, route: str) -> web.StreamResponse:
    """Count a predict request from arrival to response.

    Counters are always updated on ``state.stats`` as it is *now*: a
    ``/stats/reset`` during the request swaps in a fresh object that carries
    the ``in_flight`` gauge over.
    """
    state = request.app[STATE]
    state.stats.enter()
    try:
        response = await predict(request, route)
    finally:
        state.stats.leave()
    if response is None:
        # The transport is gone; aiohttp's attempt to send this fails quietly.
        return web.Response(status=500)
    state.stats.count_status(response.status)
    return response


async def handle_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].stats.to_json())


async def handle_stats_reset(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.stats = state.stats.reset()
    return web.json_response(state.stats.to_json())


async def handle_get_config(request: web.Request) -> web.Response:
    return web.json_response(dataclasses.asdict(request.app[STATE].config))


async def handle_post_config(request: web.Request) -> web.Response:
    try:
        changes = parse_json_object(await request.read())
        config = request.app[STATE].configure(changes)
    except BadRequest as exc:
        return google_error(exc.code, exc.message)
    except ValueError as exc:
        return google_error(400, str(exc))
    return web.json_response(dataclasses.asdict(config))


async def handle_healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


ADMIN_ROUTES = {
    ("GET", "/stats"): handle_stats,
    ("POST", "/stats/reset"): handle_stats_reset,
    ("GET", "/config"): handle_get_config,
    ("POST", "/config"): handle_post_config,
    ("GET", "/healthz"): handle_healthz,
}


async def handle_v2_get(request: web.Request) -> web.Response:
    """v2 health, model readiness and metadata."""
    config = request.app[STATE].config
    path = request.path
    if path in ("/v2/health/live", "/v2/health/ready"):
        return web.json_response({path.rsplit("/", 1)[1]: True})
    if path == "/v2":
        return web.json_response({"name": "localserver", "version": "1",
                                  "extensions": ["binary_tensor_data", "classification"]})
    match = v2.MODEL_PATH.match(path)
    if not match:
        return v2_error(404, f"no route {path}")
    name, version, ready = match.groups()
    if name != config.model_name or version not in (None, "1"):
        return v2_error(404, f"model {name} not found")
    if ready:
        if not config.v2_model_ready:
            return v2_error(503, f"model {name} is not ready")
        return web.json_response({"name": name, "ready": True})
    return web.json_response(v2.metadata(v2_model(config, request.app[STATE].classifier)))


async def dispatch(request: web.Request) -> web.StreamResponse:
    """Route by method and path suffix; everything else is a Google-style 404."""
    path = request.path
    if path == "/v2" or path.startswith("/v2/"):
        if request.method == "GET":
            return await handle_v2_get(request)
        match = v2.INFER_PATH.match(path) if request.method == "POST" else None
        if not match:
            return v2_error(404, f"no route {request.method} {path}")
        if match.group(1) != request.app[STATE].config.model_name:
            return v2_error(404, f"model {match.group(1)} not found")
        return await handle_predict(request, V2_ROUTE)
    if request.method == "POST":
        if embeddings.MULTIMODAL_PATH.search(path):
            return await handle_predict(request, MULTIMODAL_ROUTE)
        if RAW_PREDICT_PATH.search(path):
            return await handle_predict(request, RAW_ROUTE)
        if ENDPOINT_PREDICT_PATH.search(path):
            return await handle_predict(request, ENDPOINTS_ROUTE)
        if MODEL_PREDICT_PATH.search(path):
            return await handle_predict(request, MODELS_ROUTE)
    handler = ADMIN_ROUTES.get((request.method, path))
    if handler is not None:
        return await handler(request)
    return google_error(404, f"The requested URL {path} was not found on this server.")


def build_app(config: Config, classifier=None) -> web.Application:
    """The aiohttp application; must be called inside a running event loop."""
    app = web.Application(client_max_size=CLIENT_MAX_SIZE)
    app[STATE] = ServerState(config, classifier)
    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app


# --------------------------------------------------------------------------
# Process entry point
# --------------------------------------------------------------------------


def bind_socket(host: str, port: int) -> socket.socket:
    """A bound (not yet listening) TCP socket; port 0 picks a free port."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    return sock


def listening_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


async def serve(host: str, port: int, config: Config, classifier=None) -> None:
    """Serve until SIGTERM or SIGINT, printing ``LISTENING <url>`` once ready."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    runner = web.AppRunner(build_app(config, classifier), access_log=None,
                           shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    sock = bind_socket(host, port)
    try:
        await web.SockSite(runner, sock).start()
        url = listening_url(sock)
        print(f"LISTENING {url}", flush=True)
        print(routes_text(url, config, classifier or classifiers.ColourClassifier()),
              flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()
        sock.close()


def routes_text(url: str, config: Config, classifier) -> str:
    """The predict URLs, one protocol a line (printed after the ``LISTENING`` line)."""
    paths = localserver.endpoint_paths(config.model_name)
    if not (config.constant_embedding or classifier.embedding_size):
        del paths["multimodal"]
    return "\n".join(f"  {name:<12}{url}{path}" for name, path in paths.items())


class _OneLineParser(argparse.ArgumentParser):
    """Errors in one line (`--help` for the usage), not after a usage dump."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="python -m localserver",
        description="Local ML Engine / AutoML / Vertex prediction server with a "
                    "deterministic colour classifier, EfficientNet-Lite0 or your own ONNX model.")
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to bind")
    parser.add_argument("--port", type=int, default=0, help="port to bind (0 = any free port)")
    defaults = Config()
    for name, kind in config_types().items():
        bare = {"nargs": "?", "const": 1} if name in FLAG_SWITCHES else {}
        parser.add_argument(f"--{name}", type=kind, default=getattr(defaults, name),
                            help=f"{CONFIG_HELP[name]} (default: %(default)s)", **bare)
    classifiers.add_model_flags(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    host, port = args.pop("host"), args.pop("port")
    try:
        classifier = classifiers.classifier_from_flags(args)
        if args["model_name"] == Config.model_name:
            args["model_name"] = classifier.name
        config = Config(**args)
        config.validate()
        check_embeddings(config, classifier)
    except (ValueError, ImportError, OSError) as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(host, port, config, classifier))
    return 0
