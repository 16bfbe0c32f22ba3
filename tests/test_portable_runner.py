"""The same job on Beam's portable runner and on DirectRunner writes the same rows, the same dead
letters and the same summary.

The portable job runs as `python -m pipeline.run ... --runner PortableRunner --job_endpoint embed
--environment_type EXTERNAL --environment_config localhost:PORT`: Beam's Python job service
(in the launcher's process, no Java) hands every stage over the Fn API to SDK workers that a
worker pool started by this test runs as processes of their own (`python -m
apache_beam.runners.worker.worker_pool_main`). What that proves, and what it does not:
docs/dataflow.md, "The Fn API path, tested locally".
"""
import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from tests.helpers import (ROOT, assert_accounted, labelled_images, read_dead_letters,
                           read_predictions, run_in_session, write_poison_jpeg)
from tests.servers import free_port, listening

LABELS = ["red", "green", "blue", "yellow", "cyan", "magenta"]
JOB_TIMEOUT_S = 240  # a bound for a hung job on a loaded machine, not a speed check
POOL_STARTUP_TIMEOUT_S = 30.0
POOL_STOP_TIMEOUT_S = 10.0
POOL_START_ATTEMPTS = 3  # a port free when picked may be taken before the pool binds it
SUMMARY_COUNTS = ("inputs", "predicted", "failed", "skipped", "failed_by_stage",
                  "skipped_by_reason")
RECORD_COUNTERS = ("inputs", "encoded", "instances", "predicted", "failed_decode",
                   "failed_predict", "records_committed")


def worker_env() -> dict:
    """The environment of the worker pool and the jobs: the pool starts each SDK worker as
    `python -c ...` found on PATH, so this interpreter's bin comes first, and the project is on
    PYTHONPATH (it is also installed editable in the venv) so the workers import it."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join(p for p in (os.path.dirname(sys.executable), env.get("PATH"))
                                  if p)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def check_worker_python(env):
    """The `python` the pool will start imports Beam and the project: otherwise the job would
    wait for a worker that never connects, until JOB_TIMEOUT_S."""
    python = shutil.which("python", path=env["PATH"])
    assert python, f"no `python` on PATH for the SDK workers: {env['PATH']}"
    done = subprocess.run([python, "-c", "import apache_beam, pipeline.run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=POOL_STARTUP_TIMEOUT_S)
    assert done.returncode == 0, f"{python} cannot import Beam and the project: {done.stderr}"


def stop_session(process: subprocess.Popen):
    """Stop the pool and the SDK workers it started (its own process group)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(POOL_STOP_TIMEOUT_S)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def worker_pool(log_path):
    """Beam's SDK worker pool on a free port, logging to `log_path`; yields the port."""
    check_worker_python(worker_env())
    for _ in range(POOL_START_ATTEMPTS):
        port = free_port()
        with open(log_path, "w", encoding="utf-8") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                 "--service_port", str(port)],
                cwd=ROOT, env=worker_env(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            if listening(port, process, POOL_STARTUP_TIMEOUT_S, "the worker pool"):
                break
        except BaseException:
            stop_session(process)
            raise
    else:
        raise RuntimeError(f"the worker pool exited {POOL_START_ATTEMPTS} times: "
                           f"{open(log_path, encoding='utf-8').read()[-2000:]}")
    try:
        yield port
    finally:
        stop_session(process)


def run_job(flags, runner_flags):
    done = run_in_session([sys.executable, "-m", "pipeline.run", *flags, *runner_flags],
                          JOB_TIMEOUT_S, cwd=ROOT, env=worker_env(), stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def without(rows, field):
    """Rows without a field (a timestamp), in key order."""
    return sorted(({k: v for k, v in row.items() if k != field} for row in rows),
                  key=lambda row: row["key"])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    truth = labelled_images(folder, LABELS, fmt_cycle=("jpg", "png"))
    corrupt = folder / "corrupt.jpg"
    corrupt.write_bytes(b"this is not an image")
    poison = write_poison_jpeg(folder)  # decodes here, the server cannot read its pixels
    return folder, truth, {str(corrupt): "decode", poison: "predict"}


def test_portable_runner_writes_what_direct_runner_writes(inputs, server, tmp_path):
    folder, truth, bad = inputs
    outputs = {name: str(tmp_path / name / "pred") for name in ("direct", "portable")}

    def flags(name):
        return ["--input", str(folder), "--endpoint", server.endpoint("mlengine"),
                "--output", outputs[name], "--output_format", "both",
                "--max_instances_per_request", "4"]

    direct = run_job(flags("direct"), ["--runner", "DirectRunner"])
    with worker_pool(tmp_path / "pool.log") as port:
        portable = run_job(flags("portable"), [
            "--runner", "PortableRunner", "--job_endpoint", "embed",
            "--environment_type", "EXTERNAL", "--environment_config", f"localhost:{port}"])
    pool_log = (tmp_path / "pool.log").read_text(encoding="utf-8")
    assert "Starting worker with command" in pool_log, pool_log[-2000:]

    for summary in (direct, portable):
        assert_accounted(summary)
        assert summary["predicted"] == len(truth) and summary["failed"] == len(bad), summary
        assert summary["failed_by_stage"] == {"decode": 1, "predict": 1}, summary
    assert {k: portable[k] for k in SUMMARY_COUNTS} == {k: direct[k] for k in SUMMARY_COUNTS}
    assert read_json(f"{portable['output']}-summary.json")["run_id"] == portable["run_id"]

    counters = {name: read_json(f"{summary['output']}-metrics.json")["counters"]
                for name, summary in (("direct", direct), ("portable", portable))}
    assert {k: counters["portable"].get(k) for k in RECORD_COUNTERS} == \
        {k: counters["direct"].get(k) for k in RECORD_COUNTERS}

    for fmt in ("parquet", "jsonl"):
        rows = {name: read_predictions(prefix, fmt) for name, prefix in outputs.items()}
        assert {r["key"]: r["top_label"] for r in rows["portable"]} == truth, fmt
        assert without(rows["portable"], "predicted_at") == \
            without(rows["direct"], "predicted_at"), fmt

    letters = {name: read_dead_letters(f"{prefix}-errors") for name, prefix in outputs.items()}
    assert {d["key"]: d["stage"] for d in letters["portable"]} == bad
    assert without(letters["portable"], "failed_at") == without(letters["direct"], "failed_at")
    assert glob.glob(f"{portable['errors']}-*.jsonl"), "no dead-letter shard of this run"
