"""`--protocol v2` end to end against the project's own server speaking the Open Inference
Protocol (JSON and binary, BYTES and pixel tensors), and the v2 preflight."""
import json
import socket
import subprocess
import sys
import threading
import time

import pytest

from localserver.demo import LABEL_COLOURS
from pipeline.model_check import check_model, NotReady
from pipeline.options import ConfigError
from pipeline.run import run
from protocols.v2 import V2
from tests.helpers import (assert_accounted, labelled_images, read_dead_letters, read_predictions,
                           write_poison_jpeg)

LABELS = list(LABEL_COLOURS) * 2
MODEL = "local-color-classifier"


def job(tmp_path, endpoint, *extra):
    return run(["--input", str(tmp_path / "images"), "--endpoint", endpoint,
                "--protocol", "v2", "--output", str(tmp_path / "out" / "pred"), *extra])


def test_every_image_gets_its_true_label_json_and_binary(tmp_path, server):
    truth = labelled_images(tmp_path / "images", LABELS)
    largest = {}
    for flags in ([], ["--binary_data"]):
        server.reset_stats()
        out = tmp_path / ("bin" if flags else "json")
        summary = run(["--input", str(tmp_path / "images"), "--endpoint", server.endpoint("v2"),
                       "--protocol", "v2", "--output", str(out / "pred"),
                       "--max_instances_per_request", "5", *flags])
        rows = read_predictions(str(out / "pred"))
        assert {r["key"]: r["top_label"] for r in rows} == truth
        assert all(len(r["labels"]) == len(LABEL_COLOURS) for r in rows)
        assert {r["model"] for r in rows} == {f"{MODEL}/versions/1"}
        assert summary["predicted"] == len(truth) and summary["requests"] == 4
        assert_accounted(summary)
        largest[bool(flags)] = server.stats()["max_request_bytes"]
    assert largest[True] < largest[False] * 0.8


def test_pixel_tensor_input(tmp_path, make_server, dtype="FP32"):
    server = make_server(v2_input_datatype=dtype)
    truth = labelled_images(tmp_path / "images", LABELS[:8])
    summary = job(tmp_path, server.endpoint("v2"), "--instance_format", "tensor",
                  "--tensor_dtype", dtype, "--image_size", "8x6", "--binary_data")
    rows = read_predictions(str(tmp_path / "out" / "pred"))
    assert {r["key"]: r["top_label"] for r in rows} == truth
    assert summary["predicted"] == 8


def test_score_tensor_named_by_label_names(tmp_path, make_server):
    server = make_server(v2_outputs="scores")
    truth = labelled_images(tmp_path / "images", LABELS[:8])
    names = ",".join(LABEL_COLOURS)  # the server's label order
    job(tmp_path, server.endpoint("v2"), "--label_names", names)
    rows = read_predictions(str(tmp_path / "out" / "pred"))
    assert {r["key"]: r["top_label"] for r in rows} == truth


def test_classification_extension(tmp_path, server):
    truth = labelled_images(tmp_path / "images", LABELS[:8])
    job(tmp_path, server.endpoint("v2"), "--classification", "2", "--binary_data")
    rows = read_predictions(str(tmp_path / "out" / "pred"))
    assert {r["key"]: r["top_label"] for r in rows} == truth
    assert {len(r["labels"]) for r in rows} == {2}


@pytest.mark.parametrize("name_instances,flags", [(1, []), (0, ["--binary_data"])])
def test_bad_image_fails_alone(tmp_path, make_server, name_instances, flags):
    server = make_server(name_instances=name_instances)
    truth = labelled_images(tmp_path / "images", LABELS)
    bad = write_poison_jpeg(tmp_path / "images")
    summary = job(tmp_path, server.endpoint("v2"), "--max_instances_per_request", "8", *flags)
    rows = read_predictions(str(tmp_path / "out" / "pred"))
    assert {r["key"]: r["top_label"] for r in rows} == truth
    letters = read_dead_letters(str(tmp_path / "out" / "pred-errors"))
    assert [(d["key"], d["stage"], d["http_status"]) for d in letters] == [(bad, "predict", 400)]
    assert "Prediction failed" in letters[0]["error"]
    assert summary["splits"] >= 1
    assert_accounted(summary)


@pytest.mark.parametrize("protocol,parameters", [("v2", '{"top_k": 3}'),
                                                 ("vertex", '{"maxPredictions": 3}')])
def test_parameters_reach_the_model(tmp_path, server, protocol, parameters):
    truth = labelled_images(tmp_path / "images", LABELS[:4])
    run(["--input", str(tmp_path / "images"), "--endpoint", server.endpoint(protocol),
         "--protocol", protocol, "--output", str(tmp_path / "out" / "pred"),
         "--parameters", parameters])
    rows = read_predictions(str(tmp_path / "out" / "pred"))
    assert {r["key"]: r["top_label"] for r in rows} == truth
    assert {len(r["labels"]) for r in rows} == {3}


def test_model_metadata_picks_the_input_name_and_checks_its_datatype(tmp_path, make_server):
    server = make_server(v2_input_datatype="FP32")
    labelled_images(tmp_path / "images", LABELS[:2])
    with pytest.raises(ConfigError, match="takes FP32.*use --instance_format tensor"):
        job(tmp_path, server.endpoint("v2"))
    with pytest.raises(ConfigError, match="--model_input nope: the model's inputs are image"):
        job(tmp_path, server.endpoint("v2"), "--model_input", "nope", "--instance_format",
            "tensor", "--tensor_dtype", "FP32", "--image_size", "4x4")


def cli(*argv):
    return subprocess.run([sys.executable, "-m", "pipeline.run", *argv], capture_output=True,
                          text=True, timeout=120)


def test_model_not_ready_is_one_line_and_exit_2(tmp_path, make_server):
    server = make_server(v2_model_ready=0)
    labelled_images(tmp_path / "images", LABELS[:2])
    done = cli("--input", str(tmp_path / "images"), "--endpoint", server.endpoint("v2"),
               "--protocol", "v2", "--output", str(tmp_path / "out" / "pred"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"batch-predict: error: model {MODEL} is not ready: GET {server.url}/v2/models/{MODEL}"
        f"/ready answered HTTP 503: {json.dumps({'error': f'model {MODEL} is not ready'})}"]
    assert server.stats()["requests"] == 0


@pytest.mark.parametrize("path,expected", [
    (None, "server is not reachable: GET http://127.0.0.1:9/v2/health/ready"),
    ("/v2/models/other/infer", "model other is not ready: GET "),
    ("/v1/models/m:predict", "needs an endpoint ending in /v2/models/NAME")])
def test_server_down_unknown_model_or_wrong_url_stop_before_the_job(tmp_path, server, path,
                                                                    expected):
    labelled_images(tmp_path / "images", LABELS[:2])
    endpoint = server.url + path if path else "http://127.0.0.1:9/v2/models/m/infer"
    with pytest.raises(ConfigError, match=expected):
        job(tmp_path, endpoint)
    assert server.stats()["requests"] == 0


def test_v2_flags_with_another_protocol_are_a_bad_invocation(tmp_path):
    labelled_images(tmp_path / "images", LABELS[:1])
    done = cli("--input", str(tmp_path / "images"), "--endpoint", "http://127.0.0.1:9/x:predict",
               "--binary_data", "--output", str(tmp_path / "out"))
    assert done.returncode == 2
    assert done.stderr.strip() == "batch-predict: error: --binary_data applies to --protocol " \
                                  "v2 only"


@pytest.mark.parametrize("protocol,flags", [("mlengine", []),
                                            ("v2", ["--model_input", "image"])])
def test_vertex_raw_predict_takes_the_model_id_from_the_header(tmp_path, server, protocol,
                                                               flags):
    truth = labelled_images(tmp_path / "images", LABELS[:4])
    summary = run(["--input", str(tmp_path / "images"), "--endpoint", server.endpoint("raw"),
                   "--protocol", protocol, "--output", str(tmp_path / "out" / "pred"), *flags])
    rows = read_predictions(str(tmp_path / "out" / "pred"))
    assert {r["key"]: r["top_label"] for r in rows} == truth
    assert {r["model"] for r in rows} == {"local-color-1"}
    assert summary["predicted"] == 4


def test_v2_raw_predict_needs_the_input_name(tmp_path, server):
    labelled_images(tmp_path / "images", LABELS[:1])
    with pytest.raises(ConfigError, match=":rawPredict needs --model_input"):
        job(tmp_path, server.endpoint("raw"))


def test_label_names_file_names_the_score_tensor_and_prediction_is_the_images_outputs(
        tmp_path, make_server):
    server = make_server(v2_outputs="scores")
    truth = labelled_images(tmp_path / "images", LABELS[:8])
    names = tmp_path / "names.txt"
    names.write_text("\n".join(LABEL_COLOURS) + "\n")  # the server's label order
    summary = job(tmp_path, server.endpoint("v2"), "--label_names_file", str(names),
                  "--binary_data")
    rows = read_predictions(str(tmp_path / "out" / "pred"))
    assert {r["key"]: r["top_label"] for r in rows} == truth
    for row in rows:
        said = json.loads(row["prediction"])
        assert list(said) == ["scores"] and len(said["scores"]) == len(LABEL_COLOURS)
        assert {label: s for label, s in zip(LABEL_COLOURS, said["scores"])} == \
            pytest.approx({l["label"]: l["score"] for l in row["labels"]})
    assert summary["predicted"] == 8


def test_label_and_score_fields_name_the_output_tensors(tmp_path, server):
    truth = labelled_images(tmp_path / "images", LABELS[:4])
    job(tmp_path, server.endpoint("v2"), "--labels_field", "labels", "--scores_field",
        "scores", "--no_prediction_column")
    rows = read_predictions(str(tmp_path / "out" / "pred"))
    assert {r["key"]: r["top_label"] for r in rows} == truth
    assert all(r.get("prediction") is None for r in rows)
    with pytest.raises(ConfigError, match="--scores_field probs: the model's outputs are "
                                          "labels, scores"):
        job(tmp_path, server.endpoint("v2"), "--scores_field", "probs")


class MisbehavingServer:
    """A raw 127.0.0.1 socket server for the v2 start-up checks: `drip` sends its status line
    and headers one byte every 0.2 s (for at most 60 s); `endless` answers 200 with a chunked
    body of 64 KiB chunks that does not end (for at most 256 MiB)."""

    def __init__(self, kind):
        self.kind = kind
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        self.listener.settimeout(0.5)
        while not self.stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:
                continue
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection):
        with connection:
            try:
                connection.recv(65536)
                if self.kind == "drip":
                    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 300:
                        if self.stop.wait(0.2):
                            return
                        connection.sendall(bytes([byte]))
                else:
                    connection.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    chunk = b"10000\r\n" + b"x" * 65536 + b"\r\n"
                    for _ in range(4096):
                        if self.stop.is_set():
                            return
                        connection.sendall(chunk)
            except OSError:
                pass

    def close(self):
        self.stop.set()
        self.listener.close()
        self.thread.join(5)


def start_up_check_error(kind) -> str:
    """The NotReady line of a start-up check (1 s timeout, 1 MB cap) against a
    MisbehavingServer of this kind; fails the test if the check is still running after 30 s
    (a guard against a hang, far above the 1 s asked for)."""
    server = MisbehavingServer(kind)
    outcome = {}

    def check():
        try:
            check_model(V2(), f"http://127.0.0.1:{server.port}/v2/models/m/infer",
                        timeout_s=1.0, max_bytes=1_000_000)
        except NotReady as e:
            outcome["error"] = str(e)

    try:
        thread = threading.Thread(target=check, daemon=True)
        thread.start()
        thread.join(30)
        assert not thread.is_alive(), f"the {kind} server held the check for 30 s"
    finally:
        server.close()
    return outcome.get("error", "")


@pytest.mark.parametrize("kind, message", [("drip", "did not answer within 1 s"),
                                           ("endless", "more than 1000000 bytes")])
def test_start_up_checks_keep_to_the_timeout_and_the_reply_cap(kind, message):
    """A server that drips its headers, or sends an endless body, is refused within the
    check's own timeout and the reply-size cap (it used to hold the job for as long as the
    server kept going: urllib's timeout is per read, and the body was read whole)."""
    assert message in start_up_check_error(kind)


def test_the_start_up_deadline_holds_when_it_passes_before_the_connection(monkeypatch):
    """A name lookup slower than the whole timeout, then a server that drips: the deadline
    passed while there was no socket to shut, and must still end the check."""
    lookup = socket.getaddrinfo

    def slow_lookup(*args, **kwargs):
        time.sleep(1.2)  # a slow resolver: longer than the check's whole timeout
        return lookup(*args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow_lookup)
    assert "did not answer within 1 s" in start_up_check_error("drip")
