"""The local server's embeddings: EfficientNet-Lite0's pooled features (the shipped graph's
`embedding` output) on ML Engine, Vertex, :rawPredict and v2, the Vertex multimodal embeddings
shape (../shared/PROTOCOLS.md, "Vertex AI multimodal embeddings"), and the constant mode.

Every vector is compared with one the test computes itself: onnxruntime's `embedding` output
for the same preprocessed images, projected with `embeddings.projection` for multimodal."""
import base64
import hashlib
import importlib.util
import json
import os
import selectors
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import onnx
import onnxruntime
import pytest
from PIL import Image

from localserver import LocalServer, embeddings
from localserver.classifiers import (EFFICIENTNET_LITE0, MODELS_DIR, Preprocessing,
                                     to_tensor)
from localserver.demo import PHOTOS_DIR

ONNX_PATH = os.path.join(MODELS_DIR, "efficientnet_lite0.onnx")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDTH = 1280
TOLERANCE = 1e-6
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
HTTP_TIMEOUT_S = 60
#: The switches each test of the EfficientNet server starts from.
LITE0_SWITCHES = {"embeddings": 1, "constant_embedding": 0, "v2_outputs": "labels_scores",
                  "read_gcs": 1}


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts",
                                                                     f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def photo_bytes(name):
    with open(os.path.join(PHOTOS_DIR, name), "rb") as f:
        return f.read()


def b64(data):
    return base64.b64encode(data).decode("ascii")


def photo(name):
    return Image.open(os.path.join(PHOTOS_DIR, name))


@pytest.fixture(scope="module")
def session():
    return onnxruntime.InferenceSession(ONNX_PATH, providers=["CPUExecutionProvider"])


def pooled(session, images):
    """onnxruntime's `embedding` output for these images, preprocessed as the server does."""
    return session.run(["embedding"], {"image": to_tensor(images, Preprocessing())})[0]


def request(url, body=None, data=None, headers=None):
    """POST JSON (or raw bytes); (status, headers, raw body)."""
    data = json.dumps(body).encode() if data is None else data
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with OPENER.open(req, timeout=HTTP_TIMEOUT_S) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers, exc.read()


def post(url, body):
    status, _, raw = request(url, body)
    return status, json.loads(raw)


def get(url):
    with OPENER.open(url, timeout=HTTP_TIMEOUT_S) as response:
        return json.loads(response.read())


def assert_google_error(status, body, code, google_status):
    assert status == code
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "status"}
    assert body["error"]["code"] == code and body["error"]["status"] == google_status
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


@pytest.fixture
def lite0(lite0_module):
    lite0_module.configure(**LITE0_SWITCHES)
    lite0_module.reset_stats()
    return lite0_module


# --------------------------------------------------------------------------
# The graph
# --------------------------------------------------------------------------


def test_the_shipped_graphs_embedding_is_what_the_classifier_head_takes(session):
    graph = onnx.load(ONNX_PATH).graph
    script = load_script("add_embedding_output")
    assert [o.name for o in graph.output] == ["logits", "embedding"]
    shape = [d.dim_param or d.dim_value for d in graph.output[1].type.tensor_type.shape.dim]
    assert shape == ["batch", WIDTH]
    weight, bias = script.head_weights(graph, script.head(graph))
    images = [photo("cat.jpg"), photo("rocket.jpg")]
    logits, vectors = session.run(["logits", "embedding"],
                                  {"image": to_tensor(images, Preprocessing())})
    assert vectors.shape == (2, WIDTH) and vectors.min() >= 0  # ReLU6 features, averaged
    np.testing.assert_allclose(vectors @ weight.T + bias, logits, atol=1e-4)


def test_adding_the_output_again_gives_the_shipped_file_byte_for_byte():
    script = load_script("add_embedding_output")
    with open(ONNX_PATH, "rb") as f:
        shipped = f.read()
    model = onnx.load_from_string(shipped)
    assert script.with_embedding_output(model) is model
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    del stripped.graph.output[1]
    del stripped.graph.node[len(stripped.graph.node) - 1]
    assert [o.name for o in stripped.graph.output] == ["logits"]
    assert script.with_embedding_output(stripped).SerializeToString() == shipped


# --------------------------------------------------------------------------
# ML Engine, Vertex, :rawPredict
# --------------------------------------------------------------------------


def test_ml_engine_predictions_carry_the_pooled_features(lite0, session):
    cat = photo("cat.jpg").resize((224, 149))
    rows = np.asarray(cat.convert("RGB")).tolist()
    status, body = post(lite0.endpoint("mlengine"), {"instances": [
        {"b64": b64(photo_bytes("coffee.jpg"))},
        {"key": "k1", "image": {"b64": b64(photo_bytes("rocket.jpg"))}},
        rows]})
    assert status == 200
    expected = pooled(session, [photo("coffee.jpg"), photo("rocket.jpg"), cat])
    predictions = body["predictions"]
    assert [sorted(p) for p in predictions] == [["embedding", "labels", "scores"],
                                                ["embedding", "key", "labels", "scores"],
                                                ["embedding", "labels", "scores"]]
    got = np.asarray([p["embedding"] for p in predictions])
    assert got.shape == (3, WIDTH)
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)
    assert predictions[0]["labels"][0] == "espresso" and predictions[1]["key"] == "k1"


def test_vertex_and_raw_predictions_carry_the_pooled_features(lite0, session):
    expected = pooled(session, [photo("cat.jpg")])[0]
    status, body = post(lite0.endpoint("vertex"),
                        {"instances": [{"content": b64(photo_bytes("cat.jpg"))}]})
    assert status == 200
    prediction = body["predictions"][0]
    assert sorted(prediction) == ["confidences", "displayNames", "embedding", "ids"]
    np.testing.assert_allclose(prediction["embedding"], expected, rtol=0, atol=TOLERANCE)
    assert body["deployedModelId"] and body["modelDisplayName"] == EFFICIENTNET_LITE0
    status, body = post(lite0.endpoint("raw"),
                        {"instances": [{"b64": b64(photo_bytes("cat.jpg"))}]})
    assert status == 200
    np.testing.assert_allclose(body["predictions"][0]["embedding"], expected, rtol=0,
                               atol=TOLERANCE)


def test_without_the_switch_predictions_are_as_before(lite0):
    lite0.configure(embeddings=0)
    status, body = post(lite0.endpoint("mlengine"),
                        {"instances": [{"b64": b64(photo_bytes("coffee.jpg"))}]})
    assert status == 200 and sorted(body["predictions"][0]) == ["labels", "scores"]
    metadata = get(lite0.url + f"/v2/models/{EFFICIENTNET_LITE0}")
    assert [o["name"] for o in metadata["outputs"]] == ["labels", "scores"]


def test_a_bad_image_still_fails_its_request_naming_it(lite0):
    status, body = post(lite0.endpoint("mlengine"), {"instances": [
        {"b64": b64(photo_bytes("cat.jpg"))}, {"b64": b64(b"not an image")}]})
    assert status == 400 and body["error"].startswith("Prediction failed: instance 1:")


# --------------------------------------------------------------------------
# v2
# --------------------------------------------------------------------------


def v2_body(*names, outputs=None, parameters=None):
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(names)],
                        "data": [b64(photo_bytes(n)) for n in names]}]}
    if outputs is not None:
        body["outputs"] = outputs
    if parameters is not None:
        body["parameters"] = parameters
    return body


def v2_outputs(raw, headers):
    """Output name -> (shape, flat data), JSON or binary."""
    size = int(headers.get("Inference-Header-Content-Length") or len(raw))
    header, tail = json.loads(raw[:size]), raw[size:]
    found, at = {}, 0
    for output in header["outputs"]:
        binary = (output.get("parameters") or {}).get("binary_data_size")
        if binary is None:
            found[output["name"]] = (output["shape"], output["data"])
            continue
        assert output["datatype"] == "FP32"
        part = tail[at:at + binary]
        at += binary
        found[output["name"]] = (output["shape"], list(struct.unpack(f"<{binary // 4}f", part)))
    return found


def test_v2_metadata_lists_the_embedding_output(lite0):
    metadata = get(lite0.url + f"/v2/models/{EFFICIENTNET_LITE0}")
    assert metadata["outputs"] == [
        {"name": "labels", "datatype": "BYTES", "shape": [-1, 1000]},
        {"name": "scores", "datatype": "FP32", "shape": [-1, 1000]},
        {"name": "embedding", "datatype": "FP32", "shape": [-1, WIDTH]}]
    lite0.configure(v2_outputs="scores")
    metadata = get(lite0.url + f"/v2/models/{EFFICIENTNET_LITE0}")
    assert metadata["outputs"] == [
        {"name": "scores", "datatype": "FP32", "shape": [-1, 1000]},
        {"name": "embedding", "datatype": "FP32", "shape": [-1, WIDTH]}]


def test_v2_infer_answers_every_output_with_the_pooled_features(lite0, session):
    status, headers, raw = request(lite0.endpoint("v2"), v2_body("cat.jpg", "coffee.jpg"))
    assert status == 200
    outputs = v2_outputs(raw, headers)
    assert list(outputs) == ["labels", "scores", "embedding"]
    shape, data = outputs["embedding"]
    assert shape == [2, WIDTH]
    expected = pooled(session, [photo("cat.jpg"), photo("coffee.jpg")])
    np.testing.assert_allclose(np.reshape(data, shape), expected, rtol=0, atol=TOLERANCE)
    assert outputs["labels"][1][5] == "espresso"  # row 1 starts at 5: the top 5 of each


def test_v2_infer_answers_only_the_outputs_named_json_or_binary(lite0, session):
    expected = pooled(session, [photo("rocket.jpg")])
    for binary in (False, True):
        asked = [{"name": "embedding", "parameters": {"binary_data": binary}}]
        status, headers, raw = request(lite0.endpoint("v2"), v2_body("rocket.jpg",
                                                                     outputs=asked))
        assert status == 200
        outputs = v2_outputs(raw, headers)
        assert list(outputs) == ["embedding"]
        assert bool(headers.get("Inference-Header-Content-Length")) == binary
        shape, data = outputs["embedding"]
        np.testing.assert_allclose(np.reshape(data, shape), expected, rtol=0, atol=TOLERANCE)
    status, headers, raw = request(lite0.endpoint("v2"),
                                   v2_body("rocket.jpg", outputs=[{"name": "scores"}]))
    assert status == 200 and list(v2_outputs(raw, headers)) == ["scores"]


def test_v2_refuses_to_classify_the_embedding(lite0):
    asked = [{"name": "embedding", "parameters": {"classification": 3}}]
    status, _, raw = request(lite0.endpoint("v2"), v2_body("cat.jpg", outputs=asked))
    assert status == 400 and "embedding" in json.loads(raw)["error"]


# --------------------------------------------------------------------------
# Vertex multimodal embeddings
# --------------------------------------------------------------------------


def multimodal_body(image, dimension=None):
    """The request of PROTOCOLS.md: {"instances": [{"image": {...}}], "parameters": {...}}."""
    body = {"instances": [{"image": image}]}
    if dimension is not None:
        body["parameters"] = {"dimension": dimension}
    return body


def assert_multimodal_answer(status, body, dimension):
    """The response of PROTOCOLS.md: {"predictions": [{"imageEmbedding": [floats...]}],
    "deployedModelId": "..."}; returns the vector."""
    assert status == 200
    assert set(body) == {"predictions", "deployedModelId"}
    assert isinstance(body["deployedModelId"], str) and body["deployedModelId"]
    assert isinstance(body["predictions"], list) and len(body["predictions"]) == 1
    prediction = body["predictions"][0]
    assert set(prediction) == {"imageEmbedding"}
    vector = prediction["imageEmbedding"]
    assert len(vector) == dimension and all(isinstance(v, float) for v in vector)
    return np.asarray(vector, np.float32)


@pytest.mark.parametrize("dimension", [128, 256, 512, 1408, None])
def test_multimodal_answers_the_projected_features_in_each_dimension(lite0, session,
                                                                     dimension):
    status, body = post(lite0.endpoint("multimodal"), multimodal_body(
        {"bytesBase64Encoded": b64(photo_bytes("cat.jpg"))}, dimension))
    size = dimension or 1408
    vector = assert_multimodal_answer(status, body, size)
    features = pooled(session, [photo("cat.jpg")])[0]
    expected = embeddings.project(features, size)
    np.testing.assert_allclose(vector, expected, rtol=0, atol=1e-5)
    assert abs(np.linalg.norm(vector) / np.linalg.norm(features) - 1) < 0.2


def test_the_projection_is_the_documented_matrix():
    matrix = embeddings.projection(WIDTH, 128)
    assert matrix.shape == (WIDTH, 128) and matrix.dtype == np.float32
    digest = hashlib.shake_256(b"multimodalembedding projection 1280x128").digest(
        WIDTH * 128 // 8)
    bits = np.unpackbits(np.frombuffer(digest, np.uint8))
    signs = np.where(bits.reshape(WIDTH, 128) == 1, 1.0, -1.0)
    np.testing.assert_array_equal(matrix, (signs / np.sqrt(128)).astype(np.float32))


@pytest.mark.parametrize("body,words", [
    ({"instances": [{"image": {"bytesBase64Encoded": "AAAA"}}] * 2}, "exactly 1 instance"),
    ({"instances": []}, "non-empty"),
    (multimodal_body({"bytesBase64Encoded": "AAAA"}, 1024), "128, 256, 512, 1408"),
    (multimodal_body({"bytesBase64Encoded": "AAAA"}, True), "dimension"),
    (multimodal_body({"gcsUri": "gs://b/o", "bytesBase64Encoded": "AAAA"}), "exactly one"),
    (multimodal_body({"gcsUri": "https://b/o"}), "gs://bucket/object"),
    ({"instances": [{"text": "a cat"}]}, "images only"),
    (multimodal_body({"bytesBase64Encoded": b64(b"not an image")}), "Invalid image content"),
    (multimodal_body({"bytesBase64Encoded": "not base64!"}), "not base64"),
])
def test_multimodal_refusals_are_google_errors(lite0, body, words):
    status, answer = post(lite0.endpoint("multimodal"), body)
    assert_google_error(status, answer, 400, "INVALID_ARGUMENT")
    assert words in answer["error"]["message"]


def test_multimodal_counts_one_instance_and_takes_the_dimension_as_text(lite0):
    status, body = post(lite0.endpoint("multimodal"), multimodal_body(
        {"bytesBase64Encoded": b64(photo_bytes("coffee.jpg")), "mimeType": "image/jpeg"},
        "256"))
    assert_multimodal_answer(status, body, 256)
    stats = lite0.stats()
    assert stats["requests"] == 1 and stats["predicted"] == 1
    assert stats["max_request_instances"] == 1


def test_a_gcs_uri_without_an_emulator_is_a_vector_derived_from_the_uri(lite0):
    uri = "gs://bucket/photos/cat.jpg"
    status, body = post(lite0.endpoint("multimodal"), multimodal_body({"gcsUri": uri}, 512))
    vector = assert_multimodal_answer(status, body, 512)
    np.testing.assert_allclose(
        vector, embeddings.project(embeddings.uri_features(uri, WIDTH), 512), atol=1e-5)
    other = assert_multimodal_answer(*post(lite0.endpoint("multimodal"), multimodal_body(
        {"gcsUri": uri + "x"}, 512)), 512)
    assert np.abs(vector - other).max() > 0.01
    assert lite0.stats()["gcs_reads"] == 0


def test_a_gcs_uri_is_read_through_the_storage_emulator(gcs, session):
    data = photo_bytes("rocket.jpg")
    gcs.blob("photos/rocket.jpg").upload_from_string(data, content_type="image/jpeg")
    uri = f"gs://{gcs.name}/photos/rocket.jpg"
    expected = embeddings.project(pooled(session, [photo("rocket.jpg")])[0], 256)
    with LocalServer(model=EFFICIENTNET_LITE0) as server:  # started with the emulator's env
        status, body = post(server.endpoint("multimodal"),
                            multimodal_body({"gcsUri": uri}, 256))
        np.testing.assert_allclose(assert_multimodal_answer(status, body, 256), expected,
                                   atol=1e-5)
        assert server.stats()["gcs_reads"] == 1
        status, body = post(server.endpoint("multimodal"),
                            multimodal_body({"gcsUri": uri + ".missing"}, 256))
        assert_google_error(status, body, 400, "INVALID_ARGUMENT")
        assert "no such object" in body["error"]["message"]
        server.configure(read_gcs=0)
        status, body = post(server.endpoint("multimodal"),
                            multimodal_body({"gcsUri": uri}, 256))
        np.testing.assert_allclose(
            assert_multimodal_answer(status, body, 256),
            embeddings.project(embeddings.uri_features(uri, WIDTH), 256), atol=1e-5)
        assert server.stats()["gcs_reads"] == 1


def test_a_model_without_an_embedding_does_not_serve_multimodal(server):
    status, body = post(server.endpoint("multimodal"), multimodal_body(
        {"bytesBase64Encoded": b64(photo_bytes("cat.jpg"))}))
    assert_google_error(status, body, 404, "NOT_FOUND")
    assert "efficientnet_lite0" in body["error"]["message"]


# --------------------------------------------------------------------------
# The constant vector
# --------------------------------------------------------------------------


def test_the_constant_vector_is_sin_in_float32():
    vector = embeddings.constant_vector(WIDTH)
    assert len(vector) == WIDTH
    np.testing.assert_array_equal(np.asarray(vector, np.float32),
                                  np.sin(np.arange(1, WIDTH + 1)).astype(np.float32))


def test_constant_mode_answers_the_fixed_vector_on_every_protocol_without_decoding(
        make_server):
    server = make_server(constant_embedding=WIDTH)
    fixed = embeddings.constant_vector(WIDTH)
    garbage = b64(b"never decoded")
    status, body = post(server.endpoint("mlengine"), {"instances": [{"b64": garbage}] * 3})
    assert status == 200 and body == {"predictions": [{"embedding": fixed}] * 3}
    status, body = post(server.endpoint("vertex"), {"instances": [{"content": garbage}] * 2})
    assert status == 200 and body["predictions"] == [{"embedding": fixed}] * 2
    assert body["deployedModelId"]
    metadata = get(server.url + "/v2/models/local-color-classifier")
    assert metadata["outputs"] == [{"name": "embedding", "datatype": "FP32",
                                    "shape": [-1, WIDTH]}]
    v2 = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                      "data": [garbage, garbage]}]}
    for binary in (False, True):
        status, headers, raw = request(server.endpoint("v2"),
                                       {**v2, "parameters": {"binary_data_output": binary}})
        assert status == 200
        shape, data = v2_outputs(raw, headers)["embedding"]
        assert shape == [2, WIDTH]
        np.testing.assert_array_equal(np.asarray(data, np.float32),
                                      np.asarray(fixed * 2, np.float32))
    status, body = post(server.endpoint("multimodal"),
                        multimodal_body({"bytesBase64Encoded": garbage}, 128))
    vector = assert_multimodal_answer(status, body, 128)
    assert vector.tolist() == embeddings.constant_vector(128)
    stats = server.stats()
    assert stats["predicted"] == 3 + 2 + 2 + 2 + 1 and stats["responses_by_status"] == {"200": 5}


def test_constant_mode_takes_any_length(make_server):
    server = make_server(constant_embedding=7)
    status, body = post(server.endpoint("mlengine"), {"instances": [{"b64": "AAAA"}]})
    assert status == 200 and body["predictions"][0]["embedding"] == embeddings.constant_vector(7)


# --------------------------------------------------------------------------
# Flags and start-up
# --------------------------------------------------------------------------


def server_lines(*flags, count):
    """The first ``count`` lines the server prints (bounded by time); the server is stopped."""
    process = subprocess.Popen([sys.executable, "-m", "localserver", "--port", "0", *flags],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    lines, buffer = [], b""
    deadline = time.monotonic() + 30
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while len(lines) < count and time.monotonic() < deadline:
                if not selector.select(0.2):
                    continue
                chunk = os.read(process.stdout.fileno(), 4096)
                if not chunk:
                    break
                buffer += chunk
                *done, buffer = buffer.split(b"\n")
                lines += [line.decode() for line in done]
        url = lines[0].split()[1] if lines else ""
        config = get(url + "/config") if url else {}
    finally:
        process.terminate()
        process.wait(10)
        process.stdout.close()
    return lines, config


def test_start_up_prints_every_predict_url_and_the_bare_flag_turns_embeddings_on():
    lines, config = server_lines("--model", EFFICIENTNET_LITE0, "--embeddings", count=7)
    assert lines[0].startswith("LISTENING http://127.0.0.1:")
    url = lines[0].split()[1]
    handle = LocalServer.attach(url)
    handle.switches["model_name"] = EFFICIENTNET_LITE0
    printed = dict(line.split() for line in lines[1:])
    assert printed == {name: handle.endpoint(name)
                       for name in ("mlengine", "automl", "vertex", "raw", "v2", "multimodal")}
    assert config["embeddings"] == 1


def test_the_colour_model_prints_no_multimodal_url():
    lines, _ = server_lines(count=6)
    assert len(lines) == 6 and not any("multimodal" in line for line in lines)


@pytest.mark.parametrize("flags,message", [
    (["--embeddings", "1"], "needs a model with an 'embedding' output"),
    (["--constant", "1", "--constant_embedding", "8"], "cannot both be on"),
    (["--constant_embedding", "-1"], "constant_embedding must be >= 0"),
])
def test_bad_embedding_flags_are_one_line_and_exit_2(flags, message):
    done = subprocess.run([sys.executable, "-m", "localserver", *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and message in done.stderr
    assert "Traceback" not in done.stderr


def test_embeddings_cannot_be_switched_on_for_a_model_without_one(server):
    with pytest.raises(RuntimeError, match="HTTP 400.*needs a model with an 'embedding'"):
        server.configure(embeddings=1)
    assert server.configure()["embeddings"] == 0
