"""Embeddings end to end: the `embedding` column on every protocol against the local server
(EfficientNet-Lite0's pooled features, recomputed here with onnxruntime), the Vertex
multimodal request checked field by field (../shared/PROTOCOLS.md, "Vertex AI multimodal
embeddings"), `gcsUri` inputs never read by the workers, one vector length a run, backfills
and the BigQuery schema; and the pure functions that read vectors."""
import base64
import glob
import io
import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import onnxruntime
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery, storage
from PIL import Image

from core.records import (bigquery_schema, ImageRef, prediction_json, prediction_record,
                          utc_now)
from imaging.decode import ImageError
from localserver import embeddings, LocalServer
from localserver.classifiers import EFFICIENTNET_LITE0, MODELS_DIR, Preprocessing, to_tensor
from localserver.demo import PHOTO_CLASSES, PHOTOS_DIR
from pipeline.config import build_config
from pipeline.model_check import vector_spec
from pipeline.options import ConfigError, parse_options
from pipeline.run import run
from protocols import make_protocol
from protocols.embedding import (EmbeddingSpec, take_vector, vector_of, vector_output,
                                 VectorLength)
from protocols.google import Multimodal
from protocols.labels import LabelError, LabelSpec
from protocols.v2 import V2
from tests.helpers import (assert_accounted, check_jsonl_against_schema_file, EMULATOR_BUCKET,
                           EMULATOR_PROJECT, labelled_images, read_dead_letters,
                           read_predictions, reply, serving, STUB_CREDENTIALS,
                           write_poison_jpeg)
from tests.servers import free_port, listening, ROOT, stop
from transforms.encode import encode_instance, uri_instance
from tests.test_crashsafe import committed_rows, kill_when, part_rows

TOLERANCE = 1e-6
WIDTH = 1280
PHOTOS = sorted(PHOTO_CLASSES)
ONNX_PATH = os.path.join(MODELS_DIR, "efficientnet_lite0.onnx")
KILL_JOB = 400


# -- fixtures and helpers ------------------------------------------------------------------

@pytest.fixture(scope="module")
def session():
    return onnxruntime.InferenceSession(ONNX_PATH, providers=["CPUExecutionProvider"])


@pytest.fixture
def lite0(lite0_module):
    lite0_module.configure(embeddings=1, constant_embedding=0, v2_outputs="labels_scores")
    lite0_module.reset_stats()
    return lite0_module


def photo_folder(tmp_path):
    """The demo photos, and a PNG copy of one (sent as it is on every protocol)."""
    folder = tmp_path / "images"
    folder.mkdir()
    for name in PHOTOS:
        shutil.copyfile(os.path.join(PHOTOS_DIR, name), folder / name)
    with Image.open(os.path.join(PHOTOS_DIR, "cat.jpg")) as img:
        img.convert("RGB").save(folder / "cat-copy.png")
    return folder


def features(session, path):
    """onnxruntime's `embedding` output for one image file, preprocessed as the server does."""
    with Image.open(path) as img:
        return session.run(["embedding"], {"image": to_tensor([img], Preprocessing())})[0][0]


def vectors(prefix, fmt):
    return {r["key"]: r["embedding"] for r in read_predictions(prefix, fmt)}


def assert_vectors(prefix, expected):
    """Every row's vector, in Parquet and JSONL, equals the expected one to TOLERANCE."""
    for fmt in ("parquet", "jsonl"):
        found = vectors(prefix, fmt)
        assert set(found) == set(expected), fmt
        for key, vector in found.items():
            assert len(vector) == len(expected[key]), (fmt, key)
            np.testing.assert_allclose(np.asarray(vector, np.float64), expected[key],
                                       atol=TOLERANCE, rtol=0, err_msg=f"{fmt} {key}")


def job(folder, endpoint, out, *flags):
    return run(["--input", str(folder), "--endpoint", endpoint, "--output", str(out),
                "--output_format", "both", *flags])


# -- against the local server, every protocol ----------------------------------------------

PROTOCOL_FLAGS = {
    "v2-json": ("v2", ["--protocol", "v2"]),
    "v2-binary": ("v2", ["--protocol", "v2", "--binary_data"]),
    "mlengine": ("mlengine", ["--embedding_field", "embedding"]),
    "vertex": ("vertex", ["--protocol", "vertex", "--embedding_field", "embedding"]),
}


@pytest.mark.parametrize("name", sorted(PROTOCOL_FLAGS))
def test_labels_and_the_servers_vector_in_one_row(tmp_path, lite0, session, name):
    route, flags = PROTOCOL_FLAGS[name]
    folder = photo_folder(tmp_path)
    out = tmp_path / "out" / "pred"
    summary = job(folder, lite0.endpoint(route), out, *flags)
    assert summary["predicted"] == 5 and summary["failed"] == 0
    assert_accounted(summary)
    expected = {os.path.abspath(p): features(session, p) for p in glob.glob(f"{folder}/*")}
    assert_vectors(str(out), expected)
    rows = read_predictions(str(out))
    for row in rows:
        name_ = os.path.basename(row["key"]).replace("-copy.png", ".jpg")
        assert row["top_label"] in PHOTO_CLASSES[name_], row["key"]
        assert len(row["labels"]) > 1
        assert row["prediction"] is None  # left empty on embedding rows by default


def test_classified_scores_beside_a_binary_vector_with_its_prediction_text(tmp_path, lite0,
                                                                          session):
    folder = photo_folder(tmp_path)
    out = tmp_path / "out" / "pred"
    summary = job(folder, lite0.endpoint("v2"), out, "--protocol", "v2", "--binary_data",
                  "--classification", "3", "--keep_embedding_prediction")
    assert summary["predicted"] == 5 and summary["failed"] == 0
    expected = {os.path.abspath(p): features(session, p) for p in glob.glob(f"{folder}/*")}
    assert_vectors(str(out), expected)
    for row in read_predictions(str(out)):
        assert len(row["labels"]) == 3  # the embedding output is not asked to classify
        answer = json.loads(row["prediction"])
        np.testing.assert_allclose(answer["embedding"], row["embedding"], atol=TOLERANCE)


def test_multimodal_vectors_are_the_servers_projection(tmp_path, lite0, session):
    folder = photo_folder(tmp_path)
    out = tmp_path / "out" / "pred"
    summary = job(folder, lite0.endpoint("multimodal"), out, "--parameters",
                  '{"dimension": 256}')
    assert summary["predicted"] == 5 and summary["requests"] == 5  # one image a request
    expected = {os.path.abspath(p): embeddings.project(features(session, p), 256)
                for p in glob.glob(f"{folder}/*")}
    assert_vectors(str(out), expected)
    for row in read_predictions(str(out)):
        assert row["labels"] == [] and row["top_label"] is None and row["top_score"] is None
        assert row["model"] == embeddings.DEPLOYED_MODEL_ID
    assert lite0.stats()["predicted"] == 5


def test_a_bad_image_fails_alone(tmp_path, lite0, session):
    folder = photo_folder(tmp_path)
    write_poison_jpeg(folder)
    out = tmp_path / "out" / "pred"
    summary = job(folder, lite0.endpoint("v2"), out, "--protocol", "v2")
    assert summary["predicted"] == 5 and summary["failed"] == 1
    assert_accounted(summary)
    (dead,) = read_dead_letters(str(out) + "-errors")
    assert dead["key"].endswith("poison.jpg")
    assert all(len(v) == WIDTH for v in vectors(str(out), "parquet").values())


def test_l2_normalised_and_kept_prediction_text(tmp_path, lite0, session):
    folder = photo_folder(tmp_path)
    out = tmp_path / "out" / "pred"
    job(folder, lite0.endpoint("mlengine"), out, "--embedding_field", "embedding",
        "--normalize_embedding", "l2", "--keep_embedding_prediction")
    expected = {}
    for path in glob.glob(f"{folder}/*"):
        vector = features(session, path).astype(np.float64)
        expected[os.path.abspath(path)] = vector / np.linalg.norm(vector)
    assert_vectors(str(out), expected)
    for row in read_predictions(str(out)):
        answer = json.loads(row["prediction"])
        assert set(answer) >= {"labels", "scores", "embedding"}
        np.testing.assert_allclose(np.linalg.norm(row["embedding"]), 1.0, atol=1e-5)


def test_constant_vectors_alone_on_v2_read_from_the_metadata(tmp_path, make_server):
    server = make_server(constant_embedding=24)
    folder = photo_folder(tmp_path)
    out = tmp_path / "out" / "pred"
    summary = job(folder, server.endpoint("v2"), out, "--protocol", "v2", "--binary_data")
    assert summary["predicted"] == 5
    fixed = np.asarray(embeddings.constant_vector(24), np.float32)
    assert_vectors(str(out), {os.path.abspath(p): fixed for p in glob.glob(f"{folder}/*")})
    for row in read_predictions(str(out), "jsonl"):
        assert row["labels"] == [] and row["top_label"] is None
        assert "prediction" not in row


def test_schema_file_loads_in_bigquerys_client_and_jsonl_matches_it(tmp_path, lite0):
    folder = photo_folder(tmp_path)
    out = tmp_path / "out" / "pred"
    job(folder, lite0.endpoint("multimodal"), out, "--parameters", '{"dimension": 128}')
    schema_path = f"{out}.schema.json"
    client = bigquery.Client(project="p", credentials=AnonymousCredentials())
    fields = {f.name: f for f in client.schema_from_json(schema_path)}
    assert fields["embedding"].field_type in ("FLOAT64", "FLOAT")
    assert fields["embedding"].mode == "REPEATED"
    rows = check_jsonl_against_schema_file(
        [p for p in glob.glob(f"{out}-*.jsonl") if "-errors" not in p], schema_path)
    assert {len(r["embedding"]) for r in rows} == {128}


# -- backfills ---------------------------------------------------------------------------

def test_skip_existing_and_retry_dead_letters_keep_vectors(tmp_path, lite0, session):
    folder = photo_folder(tmp_path)
    poison = write_poison_jpeg(folder)
    out = tmp_path / "out" / "pred"
    first = job(folder, lite0.endpoint("v2"), out, "--protocol", "v2")
    assert first["predicted"] == 5 and first["failed"] == 1
    shutil.copyfile(os.path.join(PHOTOS_DIR, "rocket.jpg"), poison)  # mended
    shutil.copyfile(os.path.join(PHOTOS_DIR, "coffee.jpg"), folder / "new.jpg")
    retried = job(folder, lite0.endpoint("v2"), out, "--protocol", "v2",
                  "--retry_dead_letters", f"{out}-errors")
    assert retried["predicted"] == 1 and retried["skipped"] == 6
    assert_accounted(retried)
    again = job(folder, lite0.endpoint("v2"), out, "--protocol", "v2", "--skip_existing")
    assert again["predicted"] == 1 and again["skipped"] == 6  # only new.jpg
    assert_accounted(again)
    expected = {os.path.abspath(p): features(session, p) for p in glob.glob(f"{folder}/*")}
    assert_vectors(str(out), expected)


def test_crash_resume_adopts_committed_vectors(tmp_path, make_server):
    """Killed once a quarter is committed, resumed: the shards hold every key once, each
    with its vector (the adopted parts' ones included)."""
    folder = tmp_path / "many"
    keys = sorted(labelled_images(folder, ["red"] * KILL_JOB, fmt_cycle=("png",),
                                  size=(8, 8)))
    out = tmp_path / "out" / "pred"
    slow = make_server(latency_ms=50, constant_embedding=16)
    command = [sys.executable, "-m", "pipeline.run", "--input", str(folder),
               "--endpoint", slow.endpoint("mlengine"), "--output", str(out),
               "--skip_existing", "--commit_every_s", "0.05", "--max_instances_per_request",
               "4", "--max_concurrent_requests", "4", "--embedding_field", "embedding"]
    kill_when(command, lambda: committed_rows(out) >= KILL_JOB // 4, "a quarter committed")
    committed = part_rows(out)
    assert committed and all(len(r["embedding"]) == 16 for r in committed)
    resumed = run(command[3:] + ["--parts_stale_after_s", "0"])
    assert_accounted(resumed)
    assert resumed["adopted"] == len(committed)
    rows = read_predictions(str(out))
    assert sorted(r["key"] for r in rows) == keys
    fixed = embeddings.constant_vector(16)
    assert all(np.asarray(r["embedding"], np.float32).tolist() == fixed for r in rows)


def test_two_worker_processes_write_every_vector(tmp_path, make_server):
    """Records carry their vectors between worker processes (DirectRunner multi_processing):
    each key once, each with the server's vector."""
    server = make_server(constant_embedding=32)
    folder = photo_folder(tmp_path)
    out = tmp_path / "out" / "pred"
    argv = [sys.executable, "-m", "pipeline.run", "--input", str(folder), "--endpoint",
            server.endpoint("v2"), "--protocol", "v2", "--binary_data", "--output", str(out),
            "--output_format", "both", "--max_instances_per_request", "1",
            "--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["predicted"] == 5
    assert_accounted(summary)
    fixed = np.asarray(embeddings.constant_vector(32), np.float32)
    assert_vectors(str(out), {os.path.abspath(p): fixed for p in glob.glob(f"{folder}/*")})


# -- the multimodal request, field by field ----------------------------------------------

class Recorder:
    """A multimodal endpoint written here: records each request body and answers a vector
    of `dimension` values derived from the instance (`length_of` may change one's length)."""

    def __init__(self, dimension, length_of=lambda instance: None):
        self.bodies, self.lock = [], threading.Lock()
        self.dimension, self.length_of = dimension, length_of

    def handler(self):
        recorder = self

        class Handler(__import__("http.server").server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with recorder.lock:
                    recorder.bodies.append(body)
                instance = body["instances"][0]
                size = recorder.length_of(instance) or recorder.dimension
                answer = {"predictions": [{"imageEmbedding": recorded_vector(instance, size)}],
                          "deployedModelId": "recorded-model"}
                reply(self, 200, json.dumps(answer).encode(),
                      Content_Type="application/json")

        return Handler


def recorded_vector(instance, size):
    seed = int.from_bytes(json.dumps(instance, sort_keys=True).encode()[-8:], "little")
    return np.random.default_rng(seed).standard_normal(size).astype(np.float32).tolist()


MULTIMODAL_PATH = ("/v1/projects/p/locations/us-central1/publishers/google/models/"
                   "multimodalembedding@001:predict")


def test_multimodal_request_is_protocols_md_field_by_field(tmp_path):
    folder = photo_folder(tmp_path)
    with Image.open(os.path.join(PHOTOS_DIR, "rocket.jpg")) as img:
        img.convert("RGB").save(folder / "rocket-copy.webp")  # WebP: not taken as it is
    recorder = Recorder(128)
    out = tmp_path / "out" / "pred"
    with serving(recorder.handler()) as httpd:
        endpoint = f"http://127.0.0.1:{httpd.server_port}{MULTIMODAL_PATH}"
        summary = job(folder, endpoint, out, "--parameters", '{"dimension": 128}')
    assert summary["predicted"] == 6 and summary["requests"] == 6
    sent = {}
    for body in recorder.bodies:
        assert set(body) == {"instances", "parameters"}
        assert body["parameters"] == {"dimension": 128}
        assert isinstance(body["instances"], list) and len(body["instances"]) == 1
        (instance,) = body["instances"]
        assert set(instance) == {"image"} and set(instance["image"]) == {"bytesBase64Encoded"}
        data = base64.b64decode(instance["image"]["bytesBase64Encoded"], validate=True)
        with Image.open(io.BytesIO(data)) as img:
            assert img.format in ("BMP", "GIF", "JPEG", "PNG")
        sent[data] = instance
    for name in PHOTOS:  # JPEGs go as they are
        assert (folder / name).read_bytes() in sent
    rows = {r["key"]: r for r in read_predictions(str(out))}
    for row in rows.values():
        assert row["model"] == "recorded-model" and row["labels"] == []
    assert len(rows) == 6


def test_a_vector_of_another_length_is_a_parse_dead_letter(tmp_path):
    folder = photo_folder(tmp_path)
    odd = base64.b64encode((folder / "coffee.jpg").read_bytes()).decode()
    recorder = Recorder(128, lambda i: 129 if i["image"].get("bytesBase64Encoded") == odd
                        else None)
    out = tmp_path / "out" / "pred"
    with serving(recorder.handler()) as httpd:
        endpoint = f"http://127.0.0.1:{httpd.server_port}{MULTIMODAL_PATH}"
        summary = job(folder, endpoint, out, "--parameters", '{"dimension": 128}')
    assert summary["predicted"] == 4 and summary["failed"] == 1
    assert summary["failed_by_stage"] == {"parse": 1}
    assert_accounted(summary)
    (dead,) = read_dead_letters(f"{out}-errors")
    assert dead["key"].endswith("coffee.jpg") and dead["stage"] == "parse"
    assert "129" in dead["error"] and "128" in dead["error"]


@pytest.fixture
def logged_gcs(tmp_path, monkeypatch):
    """A gcp-storage-emulator of this test's own that logs every request, and the job's
    environment for it; yields (a fresh bucket, a function counting object reads so far)."""
    log_path = tmp_path / "emulator.log"
    program = os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator")
    port = free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen([program, "start", "--host=127.0.0.1", f"--port={port}",
                                    "--in-memory"], stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert listening(port, process, 20.0, "gcp-storage-emulator")
        stub = tmp_path / "stub-adc.json"
        stub.write_text(json.dumps(STUB_CREDENTIALS))
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", EMULATOR_PROJECT)
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(stub))
        client = storage.Client(credentials=AnonymousCredentials(), project=EMULATOR_PROJECT)
        bucket = client.create_bucket(EMULATOR_BUCKET)

        def object_reads():
            return log_path.read_text(errors="replace").count("alt=media")

        yield bucket, object_reads
    finally:
        stop(process)


def test_gcs_inputs_go_as_their_uri_and_are_never_read(tmp_path, logged_gcs, session):
    """With --send_uri the server reads each gs:// image (through the emulator) and the
    workers none: the emulator serves exactly the server's reads."""
    bucket, object_reads = logged_gcs
    for name in PHOTOS:
        bucket.blob(f"photos/{name}").upload_from_filename(os.path.join(PHOTOS_DIR, name))
    bucket.blob("photos/odd.webp").upload_from_string(b"a WebP the model does not take")
    out = tmp_path / "out" / "pred"
    with LocalServer(model=EFFICIENTNET_LITE0) as server:  # reads through the emulator
        summary = job(f"gs://{bucket.name}/photos/**", server.endpoint("multimodal"), out,
                      "--send_uri", "--parameters", '{"dimension": 128}')
        server_reads = server.stats()["gcs_reads"]
    assert summary["predicted"] == 4 and summary["failed"] == 1
    assert_accounted(summary)
    assert server_reads == 4 and object_reads() == 4
    (dead,) = read_dead_letters(f"{out}-errors")
    assert dead["key"].endswith("odd.webp") and dead["stage"] == "encode"
    found = vectors(str(out), "parquet")
    assert len(found) == 4
    for key, vector in found.items():
        name = key.rsplit("/", 1)[1]
        expected = embeddings.project(features(session, os.path.join(PHOTOS_DIR, name)), 128)
        np.testing.assert_allclose(vector, expected, atol=TOLERANCE, rtol=0)


def test_without_send_uri_gcs_inputs_are_read_and_sent_as_bytes(tmp_path, logged_gcs):
    bucket, object_reads = logged_gcs
    bucket.blob("photos/cat.jpg").upload_from_filename(os.path.join(PHOTOS_DIR, "cat.jpg"))
    out = tmp_path / "out" / "pred"
    with LocalServer(model=EFFICIENTNET_LITE0) as server:
        summary = job(f"gs://{bucket.name}/photos/**", server.endpoint("multimodal"), out,
                      "--parameters", '{"dimension": 128}')
        assert server.stats()["gcs_reads"] == 0
    assert summary["predicted"] == 1 and object_reads() >= 1  # the worker read it


# -- start-up -------------------------------------------------------------------------------

def config_of(*flags):
    return build_config(parse_options(["--input", "x", "--output", "o", *flags]))


def test_a_multimodal_endpoint_chooses_the_multimodal_instances():
    protocol = config_of("--endpoint", "https://us-central1-aiplatform.googleapis.com"
                         + MULTIMODAL_PATH, "--parameters", '{"dimension": 512}').protocol
    assert isinstance(protocol, Multimodal) and protocol.max_instances == 1
    assert protocol.embedding.dimension == 512
    assert protocol.embedding.field == "imageEmbedding"
    with pytest.raises(ConfigError, match="--send_uri"):
        config_of("--endpoint", "http://127.0.0.1/v1/x:predict", "--send_uri")


def test_the_multimodal_instance_and_its_uri_form():
    protocol = Multimodal({"dimension": 128}, send_uri=True)
    body = protocol.body([protocol.instance("k", b"\x01\x02", "image/png")])
    assert json.loads(body) == {"instances": [{"image": {"bytesBase64Encoded": "AQI="}}],
                                "parameters": {"dimension": 128}}
    assert json.loads(protocol.uri_instance("k", "gs://b/a.jpg")) == {
        "image": {"gcsUri": "gs://b/a.jpg"}}
    assert protocol.uri_instance("k", "/local/a.jpg") is None
    assert Multimodal({}).uri_instance("k", "gs://b/a.jpg") is None
    assert Multimodal({}).embedding.dimension == 1408


# -- reading vectors --------------------------------------------------------------------------

def test_multimodal_takes_four_formats_and_20_mb():
    protocol = Multimodal({})
    webp, png = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (300, 240), (10, 200, 30)).save(webp, "WEBP")
    Image.new("RGB", (300, 240), (10, 200, 30)).save(png, "PNG")
    for data, fmt in ((webp.getvalue(), "JPEG"), (png.getvalue(), "PNG")):
        instance = encode_instance("k", data, protocol, 1_500_000)
        sent = base64.b64decode(json.loads(instance.body)["image"]["bytesBase64Encoded"])
        with Image.open(io.BytesIO(sent)) as img:
            assert img.format == fmt
    assert png.getvalue() == base64.b64decode(json.loads(encode_instance(
        "k", png.getvalue(), protocol, 1_500_000).body)["image"]["bytesBase64Encoded"])
    big = ImageRef("gs://b/big.jpg", "gs://b/big.jpg", size=21 * 1024 * 1024)
    with pytest.raises(ImageError, match="over the"):
        uri_instance(big, Multimodal({}, send_uri=True))
    assert uri_instance(big._replace(size=1000), Multimodal({}, send_uri=True)) is not None


def test_vectors_are_finite_float32_lists_of_numbers():
    spec = EmbeddingSpec("e")
    assert vector_of([1, 2.5], spec).dtype == np.float32
    for bad in ([], [[1.0], [2.0]], ["1"], [1.0, None], [float("nan")], [1e39], "x", [1, [2]]):
        with pytest.raises(LabelError):
            vector_of(bad, spec)
    np.testing.assert_allclose(vector_of([3.0, 4.0], spec._replace(normalize="l2")), [0.6, 0.8])
    assert vector_of([0.0, 0.0], spec._replace(normalize="l2")).tolist() == [0.0, 0.0]


def test_the_vector_is_taken_out_and_labels_read_from_the_rest():
    spec = EmbeddingSpec("out.vec")
    vector, rest = take_vector({"out": {"vec": [1.0], "k": 1}, "scores": [0.5]}, spec)
    assert vector.tolist() == [1.0] and rest == {"out": {"k": 1}, "scores": [0.5]}
    with pytest.raises(LabelError, match="--embedding_field"):
        take_vector({"other": [1.0]}, spec)
    protocol = make_protocol("mlengine", embedding=EmbeddingSpec("embedding"))
    both, alone, named = protocol.parse({"predictions": [
        {"labels": ["a", "b"], "scores": [0.2, 0.8], "embedding": [1.0, 2.0]},
        {"embedding": [3.0, 4.0]},
        {"embedding": [5.0, 6.0], "key": "echoed"}]}, 3)
    assert both.labels == [("a", 0.2), ("b", 0.8)] and both.embedding.tolist() == [1, 2]
    assert alone.labels == [] and alone.error is None and alone.prediction is None
    assert named.labels == [] and named.embedding.tolist() == [5, 6]


def test_v2_binary_vectors_stay_arrays_and_scores_are_labels():
    protocol = V2(input_name="image", binary=True, embedding=EmbeddingSpec("embedding"),
                  labels=LabelSpec(("a", "b")))
    vector = np.arange(6, dtype="<f4")
    scores = np.asarray([0.1, 0.9, 0.7, 0.3], "<f4")
    header = json.dumps({"outputs": [
        {"name": "scores", "datatype": "FP32", "shape": [2, 2],
         "parameters": {"binary_data_size": scores.nbytes}},
        {"name": "embedding", "datatype": "FP32", "shape": [2, 3],
         "parameters": {"binary_data_size": vector.nbytes}}]}).encode()
    response = protocol.decode(header + scores.tobytes() + vector.tobytes(),
                               {"Inference-Header-Content-Length": str(len(header))})
    assert isinstance(response["outputs"][1]["data"], np.ndarray)
    first, second = protocol.parse(response, 2)
    assert first.embedding.tolist() == [0, 1, 2] and second.embedding.tolist() == [3, 4, 5]
    assert first.labels[1][0] == "b" and second.labels[0][0] == "a"


def test_the_run_has_one_length_the_first_or_the_stated():
    first = VectorLength()
    assert first.refusal(np.zeros(4, np.float32)) is None
    message = first.refusal(np.zeros(5, np.float32))
    assert "5" in message and "4" in message
    assert VectorLength(8).refusal(np.zeros(4, np.float32)) is not None


def test_a_v2_models_vector_output_is_found_by_its_name_and_shape():
    scores = {"name": "scores", "datatype": "FP32", "shape": [-1, 1000]}
    vector = {"name": "embedding", "datatype": "FP32", "shape": [-1, 1280]}
    assert vector_output([scores, vector]) == ("embedding", 1280)
    assert vector_output([scores]) is None  # a lone score tensor stays scores
    assert vector_output([{**vector, "datatype": "INT64"}]) is None
    assert vector_output([{**vector, "shape": [-1, 2, 640]}]) is None
    assert vector_output([vector, {**vector, "name": "features"}]) is None
    protocol = V2(input_name="image")
    assert vector_spec(protocol, [scores, vector]) == EmbeddingSpec("embedding", dimension=1280)
    labelled = V2(input_name="image", labels=LabelSpec(scores_field="scores"))
    assert vector_spec(labelled, [scores, vector]).field is None
    with pytest.raises(ValueError, match="--embedding_field"):
        vector_spec(V2(embedding=EmbeddingSpec("nope")), [scores, vector])


def test_json_lines_write_each_float32_back_exactly():
    vector = np.random.default_rng(1).standard_normal(64).astype(np.float32)
    record = prediction_record("k", [], "m", utc_now(), embedding=vector)
    row = json.loads(prediction_json(record))
    assert np.asarray(row["embedding"], np.float32).tolist() == vector.tolist()
    assert row["labels"] == [] and row["top_label"] is None
    assert {"name": "embedding", "type": "FLOAT64", "mode": "REPEATED"} in bigquery_schema()
