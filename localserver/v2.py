"""The Open Inference Protocol (KServe v2) for the local server: health, model metadata,
readiness and infer, in JSON or with the binary tensor data extension.

The model takes one input tensor, ``image``: BYTES ``[n]`` of image files (base64 text in
JSON, raw bytes in binary), or UINT8/FP32 ``[n, H, W, 3]`` RGB pixels. It answers two
outputs, ``labels`` (BYTES ``[n, 8]``) and ``scores`` (FP32 ``[n, 8]``), score descending;
the request parameter ``top_k`` keeps the first K; with the ``v2_outputs=scores`` switch
only ``scores``, in :data:`model.LABELS` order, as a
plain classifier's softmax. With the server's ``embeddings`` switch a last output,
``embedding`` (FP32 ``[n, d]``: EfficientNet-Lite0's 1,280 pooled features), comes from the
same model run; with ``constant_embedding`` N it is the model's one output, a fixed vector
of N floats per image, and no image is decoded. A requested output with
``"classification": K`` comes back as Triton's ``"score:index:label"`` strings, top K. Errors
are ``{"error": "message"}``.
"""
import base64
import binascii
import functools
import json
import math
import re
import struct
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

from localserver import classifiers, embeddings, model

INPUT_NAME = "image"
HEADER_LENGTH = "Inference-Header-Content-Length"
INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
MODEL_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?(/ready)?$")
OUTPUT_MODES = ("labels_scores", "scores")
EMBEDDING = "embedding"
_CODES = {"UINT8": "B", "FP32": "f", "INT64": "q", "FP64": "d", "INT32": "i"}


class V2Error(Exception):
    def __init__(self, message: str, code: int = 400):
        super().__init__(message)
        self.code = code
        self.message = message


class Model(NamedTuple):
    """The v2 model as its metadata shows it: ``outputs`` is one of :data:`OUTPUT_MODES`;
    ``embedding`` the width of its ``embedding`` output (0: none); ``constant`` that the
    embedding is the constant vector and the model's only output."""

    name: str
    input_datatype: str = "BYTES"
    outputs: str = "labels_scores"
    labels: Tuple[str, ...] = model.LABELS
    embedding: int = 0
    constant: bool = False


def output_tensors(served: Model) -> List[Dict[str, Any]]:
    """The model's outputs, in the order an answer lists them."""
    vector = {"name": EMBEDDING, "datatype": "FP32", "shape": [-1, served.embedding]}
    if served.constant:
        return [vector]
    tensors = [{"name": "scores", "datatype": "FP32", "shape": [-1, len(served.labels)]}]
    if served.outputs == "labels_scores":
        tensors.insert(0, {"name": "labels", "datatype": "BYTES",
                           "shape": [-1, len(served.labels)]})
    return tensors + [vector] if served.embedding else tensors


def metadata(served: Model) -> Dict[str, Any]:
    shape = [-1] if served.input_datatype == "BYTES" else [-1, -1, -1, 3]
    return {"name": served.name, "versions": ["1"], "platform": "localserver",
            "inputs": [{"name": INPUT_NAME, "datatype": served.input_datatype,
                        "shape": shape}],
            "outputs": output_tensors(served)}


def split_body(raw: bytes, headers: Mapping[str, str]) -> Tuple[Dict[str, Any], bytes]:
    """The JSON header of an infer request and its binary tail (empty for plain JSON)."""
    length = headers.get(HEADER_LENGTH)
    size = len(raw) if length is None else _int(length, HEADER_LENGTH)
    try:
        request = json.loads(raw[:size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise V2Error(f"invalid JSON in the infer request: {exc}") from None
    if not isinstance(request, dict):
        raise V2Error("the infer request must be a JSON object")
    return request, raw[size:]


def read_images(request: Dict[str, Any], tail: bytes) -> List[Any]:
    """One element per image: bytes (BYTES input) or an H x W x 3 list (pixel input)."""
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise V2Error("expected exactly one input tensor")
    tensor = inputs[0]
    if tensor.get("name") != INPUT_NAME:
        raise V2Error(f"unexpected input {tensor.get('name')!r}; the model's input is "
                      f"{INPUT_NAME!r}")
    datatype, shape = tensor.get("datatype"), tensor.get("shape")
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) for d in shape):
        raise V2Error("input shape must be a list of integers")
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if size != len(tail):
            raise V2Error(f"binary_data_size {size} but {len(tail)} bytes follow the header")
        elements = _unpack(datatype, tail)
    else:
        elements = _flat(tensor.get("data"))
    if datatype == "BYTES":
        if len(shape) != 1 or len(elements) != shape[0]:
            raise V2Error(f"BYTES input of shape {shape} has {len(elements)} elements")
        return [e if isinstance(e, bytes) else _base64(e) for e in elements]
    if datatype in ("UINT8", "FP32"):
        if len(shape) != 4 or shape[3] != 3 or len(elements) != math.prod(shape):
            raise V2Error(f"pixel input must be [n, H, W, 3] with every element, got {shape} "
                          f"and {len(elements)} elements")
        return _images(elements, shape)
    raise V2Error(f"unsupported input datatype {datatype!r}")


def requested_outputs(request: Dict[str, Any], served: Model) -> Dict[str, Dict[str, Any]]:
    """Output name -> its parameters; every output of the model when none are named."""
    known = [t["name"] for t in output_tensors(served)]
    binary_all = bool((request.get("parameters") or {}).get("binary_data_output"))
    asked = request.get("outputs")
    if not asked:
        return {name: {"binary_data": binary_all} for name in known}
    wanted = {}
    for item in asked:
        name = item.get("name") if isinstance(item, dict) else None
        if name not in known:
            raise V2Error(f"unknown output {name!r}; the model's outputs are {known}")
        parameters = dict(item.get("parameters") or {})
        if name == EMBEDDING and parameters.get("classification"):
            raise V2Error(f"output {EMBEDDING!r} is a vector, not scores to classify")
        parameters.setdefault("binary_data", binary_all)
        wanted[name] = parameters
    return wanted


def top_k(request: Dict[str, Any]) -> int:
    """The request parameter ``top_k``: keep that many labels per image (0 = all)."""
    value = (request.get("parameters") or {}).get("top_k", 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise V2Error(f"parameter top_k must be a non-negative integer, not {value!r}")
    return value


def _image(value: Any):
    """One input element as an image (raises ``ValueError``)."""
    if isinstance(value, ValueError):
        raise value
    if isinstance(value, bytes):
        return classifiers.decode_image(value)
    return model.array_to_image(value)


def run(images: List[Any], outputs: Dict[str, Dict[str, Any]], served: Model, classifier,
        name_instances: bool = True, keep: int = 0):
    """(status, JSON header, binary tail) of the answer; a failing image fails the request."""
    decoded = []
    for index, value in enumerate(images):
        try:
            decoded.append(_image(value))
        except ValueError as exc:
            where = f"instance {index}: " if name_instances else ""
            return 400, {"error": f"Prediction failed: {where}{exc}"}, b""
    inference = classifier.infer(decoded, EMBEDDING in outputs)
    ranked = inference.ranked
    labels = tuple(classifier.labels)
    if keep and served.outputs == "labels_scores":
        ranked = [r[:keep] for r in ranked]

    def tensor(name: str, parameters: Dict[str, Any]) -> Dict[str, Any]:
        if name == EMBEDDING:
            return _vectors(inference.embeddings.tolist())
        return _output(name, ranked, served.outputs,
                       int(parameters.get("classification") or 0), labels)
    return _answer(served.name, outputs, tensor)


def _answer(model_name: str, outputs: Dict[str, Dict[str, Any]], tensor_of):
    """(200, JSON header, binary tail) with ``tensor_of(name, parameters)`` for each output."""
    tensors, tail = [], b""
    for name, parameters in outputs.items():
        tensor = tensor_of(name, parameters)
        if parameters.get("binary_data"):
            part = _pack(tensor["datatype"], tensor.pop("data"))
            tensor["parameters"] = {"binary_data_size": len(part)}
            tail += part
        tensors.append(tensor)
    return 200, {"model_name": model_name, "model_version": "1", "outputs": tensors}, tail


def constant_answer(count: int, outputs: Dict[str, Dict[str, Any]],
                    served: Model) -> Tuple[bytes, Optional[Dict[str, str]]]:
    """The constant mode's answer for ``count`` images, as :func:`answer_parts` gives it: the
    vector's JSON text or packed bytes are made once and repeated."""
    width = served.embedding
    tensor = {"name": EMBEDDING, "datatype": "FP32", "shape": [count, width]}
    if outputs[EMBEDDING].get("binary_data"):
        part = _packed_constant(width) * count
        tensor["parameters"] = {"binary_data_size": len(part)}
        return answer_parts({"model_name": served.name, "model_version": "1",
                             "outputs": [tensor]}, part)
    row = embeddings.constant_vector_json(width)[1:-1]
    data = b"[" + b",".join([row] * count) + b"]"
    head = json.dumps({"model_name": served.name, "model_version": "1"})[:-1].encode()
    return head + b', "outputs": [' + json.dumps(tensor)[:-1].encode() + b', "data": ' + \
        data + b"}]}", None


@functools.lru_cache(maxsize=4)
def _packed_constant(width: int) -> bytes:
    return _pack("FP32", embeddings.constant_vector(width))


def _vectors(rows: List[List[float]]) -> Dict[str, Any]:
    """The ``embedding`` output of one vector per image."""
    return {"name": EMBEDDING, "datatype": "FP32",
            "shape": [len(rows), len(rows[0]) if rows else 0],
            "data": [v for row in rows for v in row]}


def _output(name: str, ranked, modes: str, classes: int, labels) -> Dict[str, Any]:
    n = len(ranked)
    if classes:
        top = [[f"{score:.6f}:{labels.index(label)}:{label}" for label, score in r[:classes]]
               for r in ranked]
        return {"name": name, "datatype": "BYTES", "shape": [n, len(top[0]) if n else 0],
                "data": [v for row in top for v in row]}
    if modes == "scores":
        rows = [[dict(r).get(label, 0.0) for label in labels] for r in ranked]
    elif name == "labels":
        rows = [[label for label, _ in r] for r in ranked]
    else:
        rows = [[score for _, score in r] for r in ranked]
    datatype = "BYTES" if name == "labels" else "FP32"
    return {"name": name, "datatype": datatype, "shape": [n, len(rows[0]) if n else 0],
            "data": [v for row in rows for v in row]}


def _pack(datatype: str, data: List[Any]) -> bytes:
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in data)
    return struct.pack(f"<{len(data)}{_CODES[datatype]}", *data)


def _unpack(datatype: Any, tail: bytes) -> List[Any]:
    try:
        if datatype == "BYTES":
            items, at = [], 0
            while at < len(tail):
                (size,) = struct.unpack_from("<I", tail, at)
                if at + 4 + size > len(tail):
                    raise V2Error("a BYTES element runs past the end of the body")
                items.append(tail[at + 4:at + 4 + size])
                at += 4 + size
            return items
        code = _CODES.get(datatype)
        if code is None:
            raise V2Error(f"unsupported input datatype {datatype!r}")
        count = len(tail) // struct.calcsize(code)
        return list(struct.unpack(f"<{count}{code}", tail[:count * struct.calcsize(code)]))
    except struct.error as exc:
        raise V2Error(f"malformed binary input: {exc}") from None


def _flat(data: Any) -> List[Any]:
    if not isinstance(data, list):
        raise V2Error("input data must be a list")
    out: List[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _images(elements: List[Any], shape: List[int]) -> List[Any]:
    n, height, width, _ = shape
    per = height * width * 3
    images = []
    for i in range(n):
        flat = elements[i * per:(i + 1) * per]
        rows = [[flat[(r * width + c) * 3:(r * width + c) * 3 + 3] for c in range(width)]
                for r in range(height)]
        images.append(rows)
    return images


def _base64(text: Any) -> Any:
    """The bytes of a base64 element, or the ValueError that makes its image fail."""
    if not isinstance(text, str):
        return ValueError(f"BYTES element is not a string but {type(text).__name__}")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        return ValueError(f"invalid base64 data: {exc}")


def _int(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise V2Error(f"{name} is not an integer: {text!r}") from None


def answer_parts(header: Dict[str, Any], tail: bytes) -> Tuple[bytes, Optional[Dict[str, str]]]:
    """The response body and its extra headers (binary when there is a tail)."""
    head = json.dumps(header).encode("utf-8")
    if not tail:
        return head, None
    return head + tail, {HEADER_LENGTH: str(len(head))}
