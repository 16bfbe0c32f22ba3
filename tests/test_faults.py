"""Bounded, honest faults, as whole jobs (`python -m pipeline.run` in a subprocess, as a user
runs it): a down endpoint stops the job early with one line and exit 3, a few bad images do
not; a real KServe model server's 500 for one bad image costs only that image; a reply that
decompresses past --max_response_bytes fails its request without exhausting memory."""
import http.server
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import zlib

import pytest

from engine.engine import QUEUED_PER_SLOT
from localserver.demo import LABEL_COLOURS, write_image
from pipeline.run import run
from tests.helpers import assert_accounted, read_dead_letters, read_predictions, ROOT
from tests.servers import free_port, server_python, ServerProcess

JOB_TIMEOUT_S = 240
LABELS = list(LABEL_COLOURS)


def write_images(folder, count, size=(8, 8)):
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        write_image(os.path.join(folder, f"img_{i:04d}.png"), LABELS[i % len(LABELS)],
                    seed=i, size=size)


def closed_port_endpoint():
    """An endpoint URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1/projects/p/models/m:predict"


def run_job(*flags):
    argv = [sys.executable, "-m", "pipeline.run", *map(str, flags)]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=JOB_TIMEOUT_S)


def error_lines(stderr):
    """stderr without the progress lines every run logs."""
    return [line for line in stderr.splitlines()
            if line.strip() and not line.startswith("INFO batch_predict: progress:")]


@pytest.fixture(scope="module")
def many_images(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("many") / "images")
    write_images(folder, 3000)
    return folder


def test_a_down_endpoint_stops_the_job_early_with_one_line(many_images, tmp_path):
    done = run_job("--input", many_images, "--endpoint", closed_port_endpoint(),
                   "--output", tmp_path / "pred")
    lines = error_lines(done.stderr)
    assert done.returncode == 3, done.stderr[-3000:]
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("batch-predict: error: stopped early: "), lines
    assert "connection failed" in lines[0] and "while running" not in lines[0]
    assert "Traceback" not in done.stdout
    assert not list(tmp_path.glob("beam-temp-*"))  # the stopped sinks' staging, removed


def test_a_multi_processing_job_that_stops_early_prints_one_line(tmp_path):
    """DirectRunner's worker processes print a failed bundle's traceback on their own
    stderr, which is the launcher's: the stop is still one line."""
    folder = str(tmp_path / "images")
    write_images(folder, 60)
    done = run_job("--input", folder, "--endpoint", closed_port_endpoint(),
                   "--output", tmp_path / "pred", "--max_instances_per_request", "1",
                   "--max_retries", "0", "--direct_running_mode", "multi_processing",
                   "--direct_num_workers", "2")
    lines = error_lines(done.stderr)
    assert done.returncode == 3, done.stderr[-3000:]
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("batch-predict: error: stopped early: "), lines


def test_a_small_job_against_a_down_endpoint_exits_3_at_its_end(tmp_path):
    """23 images make one request: too few for the early stop, but a job whose every record
    failed at the endpoint is no success for a scheduler."""
    folder = str(tmp_path / "images")
    write_images(folder, 23)
    done = run_job("--input", folder, "--endpoint", closed_port_endpoint(),
                   "--output", tmp_path / "pred", "--max_retries", "0")
    lines = error_lines(done.stderr)
    assert done.returncode == 3, done.stderr[-3000:]
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("batch-predict: error: stopped: 23 of 23 records failed at "
                               "the endpoint, more than --failure_threshold=0.5"), lines
    assert "connection failed" in lines[0], lines
    summary = json.loads(done.stdout)
    assert (summary["predicted"], summary["failed"]) == (0, 23)


def test_a_job_under_its_failure_threshold_exits_0(tmp_path):
    folder = str(tmp_path / "images")
    write_images(folder, 5)
    done = run_job("--input", folder, "--endpoint", closed_port_endpoint(),
                   "--output", tmp_path / "pred", "--max_retries", "0",
                   "--failure_threshold", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["failed"] == 5


def test_an_endpoint_refusing_everything_stops_after_few_requests(make_server, tmp_path):
    folder = str(tmp_path / "images")
    write_images(folder, 600)
    server = make_server(fail_503_rate=1.0)
    done = run_job("--input", folder, "--endpoint", server.endpoint("mlengine"),
                   "--output", tmp_path / "pred", "--max_instances_per_request", "1",
                   "--max_retries", "2", "--max_concurrent_requests", "4")
    lines = error_lines(done.stderr)
    assert done.returncode == 3, done.stderr[-3000:]
    assert len(lines) == 1 and "HTTP 503" in lines[0], lines
    # 600 single-image requests of 3 attempts each would be 1,800; the stop came after the
    # first 10 requests, with at most the engine's queue of other requests under way.
    assert server.stats()["requests"] <= (10 + 4 * QUEUED_PER_SLOT) * 3, server.stats()


def test_a_few_bad_images_among_good_ones_exit_0(make_server, tmp_path):
    folder = str(tmp_path / "images")
    write_images(folder, 120)
    for i in range(12):  # truncated JPEGs: their header parses, the server refuses the pixels
        path = os.path.join(folder, f"bad_{i:02d}.jpg")
        write_image(path, "blue", seed=i, size=(256, 256), quality=95)
        with open(path, "rb") as f:
            head = f.read(6000)
        with open(path, "wb") as f:
            f.write(head)
    server = make_server()
    done = run_job("--input", folder, "--endpoint", server.endpoint("mlengine"),
                   "--output", tmp_path / "pred", "--max_instances_per_request", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert '"predicted": 120' in done.stdout and '"failed": 12' in done.stdout, done.stdout


BOMB_MIB = 400


def gzip_bomb(mib):
    """A gzip body that expands to `mib` MiB of zeros (about 400 KiB for 400 MiB)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip framing
    zeros = bytes(1024 * 1024)
    return b"".join([*(packer.compress(zeros) for _ in range(mib)), packer.flush()])


@pytest.fixture
def bomb_server():
    """A small server answering every POST 200 with a gzip bomb (Content-Encoding: gzip)."""
    body = gzip_bomb(BOMB_MIB)

    class Bomb(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except OSError:  # the client stopped reading at its cap
                pass

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Bomb)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1/projects/p/models/m:predict"
    httpd.shutdown()
    httpd.server_close()


CLIENT_SCRIPT = textwrap.dedent("""
    import asyncio, json, resource, sys
    from engine.client import ClientSettings, PredictClient
    from protocols import make_protocol
    from engine.ratelimit import RateLimiter
    from engine.retry import RetryPolicy

    async def main():
        protocol = make_protocol("mlengine")
        settings = ClientSettings(endpoint=sys.argv[1], protocol=protocol,
                                  retry=RetryPolicy(max_retries=0),
                                  max_response_bytes=int(sys.argv[2]))
        client = PredictClient(settings, RateLimiter(0))
        await client.open()
        try:
            keys = ["a", "b"]
            return await client.predict(keys, [protocol.instance(k, b"x", "image/png")
                                               for k in keys])
        finally:
            await client.close()

    def peak_mib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    before = peak_mib()
    outcomes, stats = asyncio.run(main())
    print(json.dumps({"outcomes": [o.record for o in outcomes], "growth_mib": peak_mib() - before,
                      "requests": stats.requests}, default=str))
""")


def test_a_reply_that_decompresses_past_the_cap_fails_without_exhausting_memory(bomb_server):
    cap = 8 * 1024 * 1024
    done = subprocess.run([sys.executable, "-c", CLIENT_SCRIPT, bomb_server, str(cap)],
                          cwd=ROOT, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    print(f"\npeak RSS growth reading a {BOMB_MIB} MiB gzip bomb with an 8 MiB cap: "
          f"{report['growth_mib']:.0f} MiB")
    assert [r["key"] for r in report["outcomes"]] == ["a", "b"]
    for record in report["outcomes"]:  # split like any bad answer, then failed alone
        assert record["stage"] == "predict" and record["http_status"] == 200, record
        assert "larger than --max_response_bytes=8388608" in record["error"], record
    assert report["requests"] == 3
    assert report["growth_mib"] < 64, report["growth_mib"]  # the cap, chunks, and no more


def write_truncated_jpeg(path, seed=0):
    """A JPEG whose header parses but whose pixels end early: a model fails on it."""
    write_image(path, "blue", seed=seed, size=(256, 256), quality=95)
    with open(path, "rb") as f:
        head = f.read(6000)
    with open(path, "wb") as f:
        f.write(head)


@pytest.fixture(scope="module")
def kserve_endpoint():
    """KServe's ModelServer (the `kserve` package from PyPI) with tests/kserve_model.py."""
    def command():
        port = free_port()
        return ([server_python("kserve"), os.path.join(ROOT, "tests", "kserve_model.py"),
                 "--model_name", "colours", "--http_port", str(port)],
                f"http://127.0.0.1:{port}")

    with ServerProcess(command, "/v1/models/colours") as server:
        yield server.url + "/v1/models/colours:predict"


def test_a_persistent_500_from_kserve_is_split_until_the_bad_image_is_alone(
        kserve_endpoint, tmp_path):
    folder = tmp_path / "images"
    truth = {}
    for i in range(21):
        label = ("red", "green", "blue")[i % 3]
        path = str(folder / f"img_{i:02d}.png")
        write_image(path, label, seed=i, size=(16, 16))
        truth[path] = label
    bad = {str(folder / "img_05_bad.jpg"), str(folder / "img_17_bad.jpg")}
    for seed, path in enumerate(sorted(bad)):
        write_truncated_jpeg(path, seed)
    summary = run(["--input", str(folder), "--endpoint", kserve_endpoint,
                   "--protocol", "mlengine", "--output", str(tmp_path / "out" / "pred"),
                   "--max_instances_per_request", "8", "--max_retries", "1"])
    assert_accounted(summary)
    rows = read_predictions(str(tmp_path / "out" / "pred"))
    letters = read_dead_letters(str(tmp_path / "out" / "pred-errors"))
    assert {r["key"]: r["top_label"] for r in rows} == truth, letters  # every good neighbour
    assert {d["key"] for d in letters} == bad
    assert {(d["stage"], d["http_status"]) for d in letters} == {("predict", 500)}
    assert summary["retries_by_cause"].get("http_500", 0) > 0
    # KServe drops the connection of each 500: none is reused, so no request meets a reset
    assert set(summary["retries_by_cause"]) == {"http_500"}, summary["retries_by_cause"]
    assert summary["splits"] >= 2
