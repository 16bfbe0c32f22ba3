"""Clear endings: Ctrl-C, bad outputs, missing credentials and bad numbers end in one line;
a normal run prints no stray warnings; the progress line knows the total."""
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from pipeline.run import run
from tests.helpers import cli, labelled_images, LOCAL_RUNNER, one_error_line
from transforms import progress


@pytest.fixture
def images(tmp_path):
    labelled_images(tmp_path / "images", ["red", "blue"])
    return str(tmp_path / "images")


def interrupt_when(process: subprocess.Popen, ready, what: str) -> str:
    """Ctrl-C `process` once `ready()` holds (within 120 s); its stderr once it ended."""
    try:
        deadline = time.monotonic() + 120
        while not ready() and process.poll() is None:
            assert time.monotonic() < deadline, what
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return stderr


def test_sigint_is_one_line_and_exit_130(make_server, tmp_path):
    slow = make_server(latency_ms=3000)
    labelled_images(tmp_path / "images", ["red", "blue", "green", "white"] * 4)
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.run", "--input", str(tmp_path / "images"),
         "--endpoint", slow.endpoint("mlengine"), "--output", str(tmp_path / "o"),
         "--max_instances_per_request", "1", "--max_concurrent_requests", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr = interrupt_when(process, lambda: slow.stats()["requests"] > 0,
                            "no request reached the server")
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("batch-predict: interrupted")


def test_sigint_removes_the_beam_temp_folders_this_run_made(make_server, tmp_path):
    slow = make_server(latency_ms=3000)
    labelled_images(tmp_path / "images", ["red", "blue", "green", "white"] * 4)
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.run", "--input", str(tmp_path / "images"),
         "--endpoint", slow.endpoint("mlengine"), "--output", str(out / "p"),
         "--max_instances_per_request", "1", "--max_concurrent_requests", "2",
         "--output_format", "both"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr = interrupt_when(process, lambda: list(out.glob("beam-temp-*")),
                            "no beam-temp folder was made")
    assert process.returncode == 130, stderr
    assert not list(out.glob("beam-temp-*")), list(out.iterdir())


def test_unwritable_errors_is_refused_before_the_job_starts(images, tmp_path, server):
    (tmp_path / "a_file").write_text("not a folder")
    line = one_error_line(cli("--input", images, "--endpoint", server.endpoint("mlengine"),
                              "--output", str(tmp_path / "o"),
                              "--errors", str(tmp_path / "a_file" / "errors")))
    assert "--errors" in line
    assert server.stats()["requests"] == 0


def test_auth_adc_without_credentials_is_refused_before_the_job_starts(images, tmp_path):
    env = dict(os.environ, HOME=str(tmp_path), NO_GCE_CHECK="true",
               CLOUDSDK_CONFIG=str(tmp_path / "gcloud"),
               GOOGLE_APPLICATION_CREDENTIALS=str(tmp_path / "missing.json"))
    line = one_error_line(cli("--input", images, "--endpoint",
                              "https://127.0.0.1:9/v1/projects/p/models/m:predict",
                              "--auth", "adc", "--output", str(tmp_path / "o"), env=env))
    assert "--auth adc" in line and "credentials" in line.lower()


@pytest.mark.parametrize("flag, value", [
    ("--qps", "nan"), ("--qps", "inf"), ("--qps", "-1"),
    ("--score_threshold", "7"), ("--score_threshold", "-0.5"), ("--score_threshold", "nan"),
    ("--request_timeout_s", "nan"), ("--request_timeout_s", "inf"), ("--request_timeout_s", "0"),
    ("--max_retries", "-1"),
])
def test_bad_numbers_are_refused_with_one_line(images, tmp_path, flag, value):
    line = one_error_line(cli("--input", images, "--endpoint", "http://127.0.0.1:9/m:predict",
                              "--output", str(tmp_path / "o"), f"{flag}={value}"))
    assert flag in line and value in line


def test_a_qps_no_limiter_can_hold_is_refused_with_one_line(images, tmp_path):
    """--qps 1e300 is finite, and used to fail the job with tracebacks (the limiter keeps
    one send time per request of its window)."""
    line = one_error_line(cli("--input", images, "--endpoint", "http://127.0.0.1:9/m:predict",
                              "--output", str(tmp_path / "o"), "--qps=1e300"))
    assert "--qps must be a number between 0 and 1000000" in line


def corrupt_exif_jpeg(path):
    """A JPEG whose EXIF block is cut short: Pillow warns about it when the header is read."""
    buf = io.BytesIO()
    Image.new("RGB", (40, 32), (255, 0, 0)).save(
        buf, "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x12\x00\x03")
    path.write_bytes(buf.getvalue())


def test_a_normal_run_prints_no_stray_warnings(images, tmp_path, server):
    corrupt_exif_jpeg(tmp_path / "images" / "odd_exif.jpg")
    result = cli("--input", images, "--endpoint", server.endpoint("mlengine"),
                 "--output", str(tmp_path / "o"), "--output_format", "both")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["predicted"], summary["failed"]) == (3, 0)  # no dead letters at all
    assert "No shards found" not in result.stderr
    assert "Warning" not in result.stderr and "PIL" not in result.stderr, result.stderr
    assert all(line.startswith(("predictions:", "dead letters:", "load the JSONL"))
               for line in result.stderr.splitlines()), result.stderr
    assert "dead letters: none (nothing failed)" in result.stderr.splitlines()


def test_progress_line_format():
    line = progress.progress_line(done=30, failed=2, total=120, elapsed_s=10.0,
                                  requests=8, retries=1)
    assert line.startswith("progress: 30/120 done (25.0%), 2 failed, 3.0 img/s, ETA 30s")
    assert "8 requests, 1 retries" in line
    unknown = progress.progress_line(done=30, failed=0, total=None, elapsed_s=10.0,
                                     requests=8, retries=0)
    assert unknown.startswith("progress: 30 done, 0 failed, 3.0 img/s")
    assert progress.eta_text(3725) == "1h02m"


@pytest.mark.parametrize("count", [0, 1, progress.NOTE_BATCH, 2 * progress.NOTE_BATCH + 3])
def test_note_total_passes_every_record_on_and_notes_their_count(count):
    progress.PROGRESS.start("an earlier job", 7, True)
    with TestPipeline(runner=LOCAL_RUNNER) as p:
        out = (p
               | beam.Create([f"k{i}" for i in range(count)])
               | progress.NoteTotal(f"job with {count}", whole_job=True))
        assert_that(out, equal_to([f"k{i}" for i in range(count)]))
    assert progress.PROGRESS.total == (count if count else 7)  # no record: nothing to note


def test_progress_line_shows_the_listed_total(make_server, tmp_path, monkeypatch, caplog):
    slow = make_server(latency_ms=200)
    labelled_images(tmp_path / "images", ["red", "blue", "green", "white"] * 5)
    (tmp_path / "images" / "notes.txt").write_text("skipped: not counted in the total")
    monkeypatch.setattr(progress, "PROGRESS_EVERY_S", 0.2)
    caplog.set_level(logging.INFO, logger="batch_predict")
    summary = run(["--input", str(tmp_path / "images"), "--endpoint", slow.endpoint("mlengine"),
                   "--output", str(tmp_path / "o"), "--max_instances_per_request", "1",
                   "--max_concurrent_requests", "2", "--runner", "FnApiRunner"])
    assert summary["predicted"] == 20
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress:")]
    assert lines, "no progress line"
    assert all("/20 done (" in line and "%)" in line and "ETA" in line for line in lines), lines
