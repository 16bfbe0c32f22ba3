"""Real model servers that run EfficientNet-Lite0 on the tensor exactly as received (KServe and
MLServer, tests/model_servers/*_onnx_raw.py): a tensor prepared here as the local server
prepares one (RGB, the shorter side bicubic to 256, the centre 224, (x - 127) / 128, NCHW
FP32) gets the local server's answer. No pipeline here: tests/test_tensor_e2e.py sends the
pipeline's own tensors to these servers."""
import base64
import json
import os
import urllib.error
import urllib.request
from email.message import Message
from typing import List, NamedTuple, Tuple

import numpy as np
import pytest
from PIL import Image

from localserver import LocalServer
from localserver.classifiers import EFFICIENTNET_LITE0, MODELS_DIR, read_labels
from localserver.demo import PHOTO_CLASSES, PHOTOS_DIR
from tests.servers import RAW_INPUT, RAW_MODEL, RAW_OUTPUT

PHOTOS = sorted(PHOTO_CLASSES)
LABELS = read_labels(os.path.join(MODELS_DIR, "imagenet_labels.txt"))
SIZE = 224
CROP_FRACTION = 224 / 256
MEAN, STD = 127.0, 128.0
SCORE_TOLERANCE = 0.01
HEADER_LENGTH = "Inference-Header-Content-Length"
TIMEOUT_S = 120
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Answer(NamedTuple):
    status: int
    body: dict
    scores: np.ndarray  # [n, 1000] for a 200 answer, else empty


def photo(name: str) -> Image.Image:
    with Image.open(os.path.join(PHOTOS_DIR, name)) as img:
        return img.convert("RGB")


def crop_then_resize(img: Image.Image) -> Image.Image:
    """TF EfficientNet's order: the centre square of CROP_FRACTION x the shorter side, then
    bicubic to SIZE x SIZE."""
    side = round(min(img.size) * CROP_FRACTION)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    square = img.crop((left, top, left + side, top + side))
    return square.resize((SIZE, SIZE), Image.Resampling.BICUBIC)


def resize_then_crop(img: Image.Image) -> Image.Image:
    """The local server's (and torchvision's) order: the shorter side bicubic to SIZE /
    CROP_FRACTION (256), the longer in proportion (rounded down), then the centre SIZE x SIZE."""
    short = int(SIZE / CROP_FRACTION)
    if img.width <= img.height:
        width, height = short, int(short * img.height / img.width)
    else:
        width, height = int(short * img.width / img.height), short
    resized = img.resize((width, height), Image.Resampling.BICUBIC)
    left, top = int(round((width - SIZE) / 2)), int(round((height - SIZE) / 2))
    return resized.crop((left, top, left + SIZE, top + SIZE))


def nhwc(images: List[Image.Image]) -> np.ndarray:
    """(pixel - 127) / 128 as an FP32 [n, H, W, 3] batch."""
    pixels = np.stack([np.asarray(img, dtype=np.float32) for img in images])
    return (pixels - MEAN) / STD


def nchw(images: List[Image.Image]) -> np.ndarray:
    return np.ascontiguousarray(nhwc(images).transpose(0, 3, 1, 2))


def send(url: str, body: bytes, headers: dict) -> Tuple[int, bytes, Message]:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with _OPENER.open(request, timeout=TIMEOUT_S) as response:
            return response.status, response.read(), response.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def scores_of(body: dict, tail: bytes = b"") -> np.ndarray:
    (output,) = [o for o in body["outputs"] if o["name"] == RAW_OUTPUT["name"]]
    assert output["datatype"] == "FP32"
    if "data" in output:
        values = np.asarray(output["data"], dtype=np.float32)
    else:
        size = output["parameters"]["binary_data_size"]
        assert size == len(tail)
        values = np.frombuffer(tail, dtype="<f4")
    return values.reshape(output["shape"])


def infer_json(server, tensor: np.ndarray) -> Answer:
    request = {"inputs": [{**RAW_INPUT, "shape": list(tensor.shape),
                           "data": tensor.ravel().tolist()}]}
    status, raw, _ = send(f"{server.url}/v2/models/{RAW_MODEL}/infer",
                          json.dumps(request).encode(), {"Content-Type": "application/json"})
    body = json.loads(raw)
    return Answer(status, body, scores_of(body) if status == 200 else np.empty(0))


def infer_binary(server, tensor: np.ndarray) -> Answer:
    """The binary tensor data extension both ways: raw little-endian FP32 in and out."""
    data = tensor.astype("<f4").tobytes()
    header = json.dumps({
        "inputs": [{**RAW_INPUT, "shape": list(tensor.shape),
                    "parameters": {"binary_data_size": len(data)}}],
        "outputs": [{"name": RAW_OUTPUT["name"], "parameters": {"binary_data": True}}],
    }).encode()
    status, raw, headers = send(f"{server.url}/v2/models/{RAW_MODEL}/infer", header + data,
                                {"Content-Type": "application/octet-stream",
                                 HEADER_LENGTH: str(len(header))})
    length = int(headers.get(HEADER_LENGTH, len(raw)))
    body = json.loads(raw[:length])
    return Answer(status, body, scores_of(body, raw[length:]) if status == 200 else np.empty(0))


def get(url: str) -> dict:
    with _OPENER.open(url, timeout=TIMEOUT_S) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def local_scores():
    """The local server's scores for each photo, all 1000 (`--top_k 0`), in class order."""
    files = []
    for name in PHOTOS:
        with open(os.path.join(PHOTOS_DIR, name), "rb") as f:
            files.append({"b64": base64.b64encode(f.read()).decode()})
    with LocalServer(model=EFFICIENTNET_LITE0, top_k=0) as server:
        status, raw, _ = send(server.endpoint("mlengine"),
                              json.dumps({"instances": files}).encode(),
                              {"Content-Type": "application/json"})
    assert status == 200, raw
    rows = np.zeros((len(PHOTOS), len(LABELS)))
    for row, prediction in zip(rows, json.loads(raw)["predictions"]):
        row[[LABELS.index(label) for label in prediction["labels"]]] = prediction["scores"]
    return rows


@pytest.fixture(scope="module")
def prepared():
    return nchw([resize_then_crop(photo(name)) for name in PHOTOS])


def assert_same_answers(scores: np.ndarray, expected: np.ndarray):
    assert scores.shape == (len(PHOTOS), len(LABELS))
    for name, row, want in zip(PHOTOS, scores, expected):
        assert LABELS[int(row.argmax())] == LABELS[int(want.argmax())], name
        assert LABELS[int(row.argmax())] in PHOTO_CLASSES[name]
        assert float(np.abs(row - want).max()) <= SCORE_TOLERANCE, name


@pytest.mark.parametrize("server_name", ["raw_kserve", "raw_mlserver"])
def test_metadata_declares_an_nchw_fp32_input_and_the_scores(request, server_name):
    server = request.getfixturevalue(server_name)
    metadata = get(f"{server.url}/v2/models/{RAW_MODEL}")
    tensors = {kind: [{k: t[k] for k in ("name", "datatype", "shape")} for t in metadata[kind]]
               for kind in ("inputs", "outputs")}
    assert metadata["name"] == RAW_MODEL
    assert tensors == {"inputs": [{"name": "image", "datatype": "FP32",
                                   "shape": [-1, 3, 224, 224]}],
                       "outputs": [{"name": "scores", "datatype": "FP32",
                                    "shape": [-1, 1000]}]}


@pytest.mark.parametrize("server_name", ["raw_kserve", "raw_mlserver"])
def test_a_json_tensor_prepared_like_the_local_server_gets_its_answers(
        request, server_name, prepared, local_scores):
    answer = infer_json(request.getfixturevalue(server_name), prepared)
    assert answer.status == 200, answer.body
    assert answer.body["model_name"] == RAW_MODEL
    assert_same_answers(answer.scores, local_scores)


def test_kserve_binary_tensor_data_gets_the_same_answers(raw_kserve, prepared, local_scores):
    answer = infer_binary(raw_kserve, prepared)
    assert answer.status == 200, answer.body
    assert "data" not in answer.body["outputs"][0]  # the scores came back binary too
    assert_same_answers(answer.scores, local_scores)


def test_one_image_alone_gets_the_local_servers_answer(raw_kserve, prepared, local_scores):
    answer = infer_binary(raw_kserve, prepared[1:2])
    assert answer.status == 200, answer.body
    assert answer.scores.shape == (1, len(LABELS))
    assert float(np.abs(answer.scores[0] - local_scores[1]).max()) <= SCORE_TOLERANCE


def test_cropping_before_resizing_keeps_every_top_label(raw_kserve, local_scores):
    answer = infer_binary(raw_kserve, nchw([crop_then_resize(photo(name)) for name in PHOTOS]))
    assert answer.status == 200, answer.body
    assert [LABELS[i] for i in answer.scores.argmax(axis=1)] == \
        [LABELS[i] for i in local_scores.argmax(axis=1)]


@pytest.mark.parametrize("server_name", ["raw_kserve", "raw_mlserver"])
def test_an_nhwc_tensor_is_refused_with_a_v2_error_and_the_server_goes_on(
        request, server_name, prepared):
    server = request.getfixturevalue(server_name)
    answer = infer_json(server, nhwc([resize_then_crop(photo(PHOTOS[0]))]))
    assert answer.status == 400
    assert list(answer.body) == ["error"]
    assert "expected input 'image' FP32 [-1, 3, 224, 224]" in answer.body["error"]
    assert "[1, 224, 224, 3]" in answer.body["error"]
    assert infer_json(server, prepared[:1]).status == 200
