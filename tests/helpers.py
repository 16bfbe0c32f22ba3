"""Helpers shared by the test modules: demo images, output readers, summary and schema checks,
and small request batches for the client and Predict tests. Fixtures live in conftest.py."""
import ast
import collections
import contextlib
import dataclasses
import glob
import http.server
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading

import pyarrow.parquet as pq
from apache_beam.metrics.metric import MetricsFilter

from engine.retry import RetryPolicy
from localserver.demo import color_image, LABEL_COLOURS, write_image
from localserver.server import Config as ServerConfig
from protocols.google import MLEngine
from tests import servers
from transforms import metrics

# DirectRunner's batch engine, named directly: Beam 2.77's DirectRunner first tries to download
# the Prism binary from the internet (see pipeline.run.offline_safe_runner).
LOCAL_RUNNER = "FnApiRunner"

DEFAULT_SWITCHES = dataclasses.asdict(ServerConfig())  # the local server's own defaults

FAST_RETRIES = RetryPolicy(max_retries=3, base_delay_s=0.01, max_delay_s=0.05)


# -- Jobs and their outputs ------------------------------------------------------------------

def labelled_images(folder, labels, fmt_cycle=("jpg", "png", "jpeg", "webp"), size=(48, 40)):
    """Write one image per label (in order) into `folder`; returns {absolute path: label}."""
    truth = {}
    for i, label in enumerate(labels):
        ext = fmt_cycle[i % len(fmt_cycle)]
        sub = os.path.join(str(folder), "nested") if i % 4 == 3 else str(folder)
        path = os.path.abspath(os.path.join(sub, f"{label}_{i:03d}.{ext}"))
        write_image(path, label, seed=i, size=size)
        truth[path] = label
    return truth


def counters(result) -> dict:
    """The pipeline's committed counters of a finished TestPipeline run, summed over steps."""
    query = result.metrics().query(MetricsFilter().with_namespace(metrics.NAMESPACE))
    totals = {}
    for c in query["counters"]:
        totals[c.key.metric.name] = totals.get(c.key.metric.name, 0) + c.committed
    return totals


def read_predictions(output_prefix, fmt="parquet"):
    """Every prediction row written under an output prefix, from all runs, keyed by key."""
    rows = []
    if fmt == "parquet":
        for path in sorted(glob.glob(f"{output_prefix}-*.parquet")):
            rows.extend(pq.read_table(path).to_pylist())
    else:
        for path in sorted(glob.glob(f"{output_prefix}-*.jsonl")):
            if os.path.basename(path).startswith(os.path.basename(output_prefix) + "-errors"):
                continue
            with open(path, encoding="utf-8") as f:
                rows.extend(json.loads(line) for line in f if line.strip())
    return rows


def read_dead_letters(errors_prefix):
    rows = []
    for path in sorted(glob.glob(f"{errors_prefix}-*.jsonl")):
        with open(path, encoding="utf-8") as f:
            rows.extend(json.loads(line) for line in f if line.strip())
    return rows


def assert_accounted(summary):
    assert summary["inputs"] == summary["predicted"] + summary["failed"] + summary["skipped"], \
        summary
    assert summary["accounted"] is True, summary


# -- JSONL against the written BigQuery schema file ------------------------------------------

BQ_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d{1,6})?$")


def check_value(value, field, where):
    """Raise AssertionError unless `value` loads into BigQuery column `field` from JSON."""
    mode = field.get("mode", "NULLABLE")
    if mode == "REPEATED":
        assert isinstance(value, list), f"{where}: REPEATED needs a list, got {value!r}"
        for i, item in enumerate(value):
            assert item is not None, f"{where}[{i}]: null in a REPEATED field"
            check_value(item, {**field, "mode": "REQUIRED"}, f"{where}[{i}]")
        return
    if value is None:
        assert mode == "NULLABLE", f"{where}: null in a {mode} field"
        return
    kind = field["type"]
    if kind == "STRING":
        assert isinstance(value, str), f"{where}: STRING got {value!r}"
    elif kind in ("FLOAT", "FLOAT64"):
        assert isinstance(value, (int, float)) and not isinstance(value, bool), where
    elif kind in ("INTEGER", "INT64"):
        assert isinstance(value, int) and not isinstance(value, bool), where
    elif kind == "TIMESTAMP":
        assert isinstance(value, str) and BQ_TIMESTAMP.match(value), f"{where}: {value!r}"
    elif kind == "RECORD":
        check_row(value, field["fields"], where)
    else:
        raise AssertionError(f"{where}: type {kind} not handled by this check")


def check_row(row, fields, where="row"):
    assert isinstance(row, dict), f"{where}: not an object"
    names = {f["name"] for f in fields}
    assert set(row) <= names, f"{where}: fields not in the schema: {set(row) - names}"
    for field in fields:
        if field["name"] not in row:  # an absent column loads as NULL (REPEATED: empty)
            assert field.get("mode") != "REQUIRED", f"{where}: no {field['name']}"
            continue
        check_value(row[field["name"]], field, f"{where}.{field['name']}")


def check_jsonl_against_schema_file(jsonl_paths, schema_path):
    """Every line of every file is one JSON object that matches the schema file's types."""
    with open(schema_path, encoding="utf-8") as f:
        fields = json.load(f)
    assert isinstance(fields, list) and all({"name", "type", "mode"} <= set(x) for x in fields)
    rows = []
    for path in jsonl_paths:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                assert line.endswith("\n") and line.strip(), f"{path}:{n}: blank or unterminated"
                row = json.loads(line)
                check_row(row, fields, f"{path}:{n}")
                rows.append(row)
    return rows


# -- Request batches for the client and Predict ----------------------------------------------

LABELS = list(LABEL_COLOURS)
ROOT = servers.ROOT  # the repository


def jpeg(label, size=(32, 24), seed=0, quality=90):
    buf = io.BytesIO()
    color_image(label, size, seed).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def poison_jpeg():
    """A JPEG whose header parses but whose pixels the server cannot decode."""
    whole = jpeg("red", size=(256, 256), quality=95)
    return whole[:len(whole) // 2]


def write_poison_jpeg(folder, name="poison.jpg"):
    """`poison_jpeg()` written as a file (the pipeline sends it; the model fails on it);
    returns its absolute path."""
    path = os.path.abspath(os.path.join(str(folder), name))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(poison_jpeg())
    return path


def batch(protocol, count, poison=()):
    """(keys, instances, truth): `count` images, those at `poison` indexes truncated."""
    keys, instances, truth = [], [], {}
    for i in range(count):
        label = LABELS[i % len(LABELS)]
        key = f"img-{i:03d}-{label}"
        data = poison_jpeg() if i in poison else jpeg(label, seed=i)
        keys.append(key)
        instances.append(protocol.instance(key, data, "image/jpeg"))
        truth[key] = None if i in poison else label
    return keys, instances, truth


class DuplicatingProtocol(MLEngine):
    """Sends the first instance twice: the server answers one prediction too many."""

    def body(self, instances):
        return super().body([instances[0]] + list(instances))


# gcp-storage-emulator: a stub authorized_user ADC file lets google-auth load credentials
# offline (docs/testing.md, "Testing gs:// offline").
EMULATOR_PROJECT = "emulated-project"
EMULATOR_BUCKET = "photos-bucket"

STUB_CREDENTIALS = {
    "type": "authorized_user",
    "client_id": "emulator",
    "client_secret": "emulator",
    "refresh_token": "emulator",
    "token": "emulator-stub-token",
    "expiry": "2999-01-01T00:00:00Z",
}


CLI_TIMEOUT_S = 180


def cli(*args, env=None, timeout=CLI_TIMEOUT_S):
    """`python -m pipeline.run ARGS` in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "pipeline.run", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def run_in_session(command, timeout, **kwargs) -> subprocess.CompletedProcess:
    """`subprocess.run` in a session of its own, whose every process is killed on a timeout
    (a script's background servers and jobs too, not only the script)."""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True, **kwargs) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def one_error_line(result):
    """The one `batch-predict: error:` line of a bad invocation (exit 2, nothing else)."""
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("batch-predict: error: ")
    return lines[0]


def exactly_once(keys):
    """The keys that do not occur exactly once, with their counts (empty: each once)."""
    return {k: n for k, n in collections.Counter(keys).items() if n != 1}


# -- Small HTTP servers written in a test ------------------------------------------------------

def reply(handler: http.server.BaseHTTPRequestHandler, status: int, body: bytes, **headers):
    """Answer a request of an http.server handler: status, headers (`Retry_After` ->
    `Retry-After`), Content-Length, body."""
    handler.send_response(status)
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@contextlib.contextmanager
def serving(handler_class):
    """A ThreadingHTTPServer on 127.0.0.1 running `handler_class`, shut down on exit."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def setup_packages() -> tuple:
    """setup.py's PACKAGES (what workers install), read without running setup()."""
    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "PACKAGES":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no PACKAGES")
