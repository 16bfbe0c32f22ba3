"""Image embeddings on the local server: the Vertex AI multimodal embeddings shape, the
constant vector of the benchmarks, and the fixed projections that make both recomputable.

``POST .../publishers/google/models/multimodalembedding@001:predict`` takes
``{"instances": [{"image": {"bytesBase64Encoded": "..."}}], "parameters": {"dimension": N}}``
(or ``{"image": {"gcsUri": "gs://..."}}``), exactly one instance, N in 128, 256, 512 or 1408
(default 1408), and answers ``{"predictions": [{"imageEmbedding": [N floats]}],
"deployedModelId": "..."}``. The vector is the model's embedding (EfficientNet-Lite0: its 1,280
pooled features) times :func:`projection`; a ``gcsUri`` image is read through
``STORAGE_EMULATOR_HOST`` when that is set (anonymous credentials), else its features are
:func:`uri_features` of the URI. Everything here is a pure function of its arguments, so a
test can recompute every vector the server answers.
"""
import base64
import binascii
import functools
import hashlib
import json
import math
import os
import re
import struct
from typing import Callable, Dict, List, NamedTuple, Optional

MULTIMODAL_PATH = re.compile(r"/publishers/google/models/(multimodalembedding(?:@[^/:]+)?)"
                             r":predict$")
DIMENSIONS = (128, 256, 512, 1408)
DEFAULT_DIMENSION = 1408
DEPLOYED_MODEL_ID = "local-multimodalembedding"
IMAGE_FIELDS = ("bytesBase64Encoded", "gcsUri")
DEFAULT_PROJECT = "local-project"


class EmbeddingError(Exception):
    """A request to refuse: ``code`` is its HTTP status."""

    def __init__(self, message: str, code: int = 400):
        super().__init__(message)
        self.code = code
        self.message = message


class MultimodalRequest(NamedTuple):
    """One multimodal instance: the image's bytes or its ``gs://`` URI, and the dimension."""

    image: Optional[bytes]
    gcs_uri: Optional[str]
    dimension: int


# --------------------------------------------------------------------------
# Fixed vectors and projections
# --------------------------------------------------------------------------


def float32(value: float) -> float:
    """``value`` rounded to the nearest float32, as a Python float."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


@functools.lru_cache(maxsize=8)
def constant_vector(size: int) -> List[float]:
    """The constant mode's vector: element i is ``float32(sin(i + 1))``."""
    return [float32(math.sin(i + 1)) for i in range(size)]


@functools.lru_cache(maxsize=8)
def constant_vector_json(size: int) -> bytes:
    """The JSON text of :func:`constant_vector`, made once per size."""
    return json.dumps(constant_vector(size)).encode()


@functools.lru_cache(maxsize=8)
def projection(width: int, dimension: int):
    """The fixed ``[width, dimension]`` float32 matrix that maps a model's embedding to
    ``dimension`` values: +-1/sqrt(dimension), the sign of entry (i, j) being bit
    ``i * dimension + j`` of ``SHAKE-256("multimodalembedding projection {width}x{dimension}")``
    (numpy.unpackbits order: the high bit of each byte first; 1 is +). A random projection of
    this kind keeps lengths and angles in expectation."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    seed = f"multimodalembedding projection {width}x{dimension}".encode()
    digest = hashlib.shake_256(seed).digest((width * dimension + 7) // 8)
    bits = np.unpackbits(np.frombuffer(digest, np.uint8))[:width * dimension]
    signs = bits.astype(np.float32).reshape(width, dimension) * 2 - 1
    return signs / np.float32(math.sqrt(dimension))


def project(features, dimension: int):
    """A float32 vector of ``dimension`` values: ``features @ projection(len, dimension)``."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    features = np.asarray(features, np.float32).reshape(-1)
    return features @ projection(features.shape[0], dimension)


def uri_features(uri: str, width: int):
    """Stand-in features of an image known only by its URI: byte i of
    ``SHAKE-256("gcsUri " + uri)`` divided by 256, as ``width`` float32 values."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    digest = hashlib.shake_256(f"gcsUri {uri}".encode()).digest(width)
    return np.frombuffer(digest, np.uint8).astype(np.float32) / np.float32(256)


# --------------------------------------------------------------------------
# The multimodal request
# --------------------------------------------------------------------------


def parse_dimension(parameters) -> int:
    if parameters is None:
        return DEFAULT_DIMENSION
    if not isinstance(parameters, dict):
        raise EmbeddingError("Invalid JSON payload: 'parameters' must be an object.")
    value = parameters.get("dimension", DEFAULT_DIMENSION)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or value not in DIMENSIONS:
        raise EmbeddingError(f"Invalid value for parameters.dimension: {value!r}; it must be "
                             f"one of {', '.join(map(str, DIMENSIONS))}.")
    return int(value)


def parse_multimodal(body: Dict) -> MultimodalRequest:
    """The request's one instance and dimension; :class:`EmbeddingError` for anything else."""
    instances = body.get("instances")
    if not isinstance(instances, list) or not instances:
        raise EmbeddingError("Invalid JSON payload: 'instances' must be a non-empty list.")
    if len(instances) > 1:
        raise EmbeddingError(f"multimodalembedding takes exactly 1 instance per request; "
                             f"this request has {len(instances)}.")
    instance = instances[0]
    if not isinstance(instance, dict) or "image" not in instance:
        raise EmbeddingError("Invalid JSON payload: instances[0] must be an object with an "
                             "'image'; the local server embeds images only.")
    others = sorted(set(instance) - {"image"})
    if others:
        raise EmbeddingError(f"instances[0].{others[0]} is not served: the local server "
                             "embeds images only.")
    image = instance["image"]
    given = [f for f in IMAGE_FIELDS if isinstance(image, dict) and f in image]
    if len(given) != 1:
        raise EmbeddingError("Invalid JSON payload: instances[0].image needs exactly one of "
                             "'bytesBase64Encoded' or 'gcsUri'.")
    dimension = parse_dimension(body.get("parameters"))
    if given[0] == "gcsUri":
        return MultimodalRequest(None, gcs_uri(image["gcsUri"]), dimension)
    return MultimodalRequest(image_bytes(image["bytesBase64Encoded"]), None, dimension)


def image_bytes(text) -> bytes:
    if not isinstance(text, str):
        raise EmbeddingError("instances[0].image.bytesBase64Encoded must be a string.")
    compact = "".join(text.split()).replace("-", "+").replace("_", "/")  # either alphabet
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except binascii.Error as exc:
        raise EmbeddingError(f"instances[0].image.bytesBase64Encoded is not base64: "
                             f"{exc}") from None


def gcs_uri(value) -> str:
    if not isinstance(value, str) or not re.match(r"^gs://[^/]+/.+", value):
        raise EmbeddingError(f"instances[0].image.gcsUri must be gs://bucket/object, "
                             f"not {value!r}.")
    return value


# --------------------------------------------------------------------------
# Answering it
# --------------------------------------------------------------------------


def answer(vector) -> Dict:
    return {"predictions": [{"imageEmbedding": [float(v) for v in vector]}],
            "deployedModelId": DEPLOYED_MODEL_ID}


def read_gcs(uri: str, host: str) -> bytes:
    """The object's bytes from the storage emulator at ``host`` (anonymous credentials)."""
    from google.api_core import exceptions  # pylint: disable=import-outside-toplevel
    bucket, name = uri[len("gs://"):].split("/", 1)
    try:
        return storage_client(host).bucket(bucket).blob(name).download_as_bytes()
    except exceptions.NotFound:
        raise EmbeddingError(f"Unable to read {uri}: no such object.") from None
    except exceptions.GoogleAPICallError as exc:
        raise EmbeddingError(f"Unable to read {uri}: {exc}", exc.code or 500) from None
    except Exception as exc:  # pylint: disable=broad-except  (the emulator is unreachable)
        raise EmbeddingError(f"Unable to read {uri}: {type(exc).__name__}: {exc}",
                             503) from None


@functools.lru_cache(maxsize=2)
def storage_client(host: str):
    """One anonymous google-cloud-storage client per emulator address."""
    # pylint: disable=import-outside-toplevel
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage
    return storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", DEFAULT_PROJECT),
                          credentials=AnonymousCredentials(),
                          client_options={"api_endpoint": host})


def embed_multimodal(request: MultimodalRequest, classifier, decode: Callable,
                     read_uris: bool = True, on_read: Callable[[], None] = lambda: None):
    """The ``dimension`` float32 values of one multimodal instance (:class:`EmbeddingError`
    when its image cannot be read or decoded)."""
    data = request.image
    if request.gcs_uri is not None:
        host = os.environ.get("STORAGE_EMULATOR_HOST")
        if not (read_uris and host):
            return project(uri_features(request.gcs_uri, classifier.embedding_size),
                           request.dimension)
        data = read_gcs(request.gcs_uri, host)
        on_read()
    try:
        image = decode(data)
    except ValueError as exc:
        raise EmbeddingError(f"Invalid image content: {exc}") from None
    features = classifier.infer([image], embed=True).embeddings[0]
    return project(features, request.dimension)
