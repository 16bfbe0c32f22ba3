"""Several worker processes: DirectRunner with `--direct_num_workers 2 --direct_running_mode
multi_processing` predicts the same keys as a single-process run, and the processes together
keep to the job-wide --qps (each spaces its requests at qps / 2).

The multi-process job runs as `python -m pipeline.run` in a subprocess (Beam starts its SDK
worker processes from there), against a local server whose quota equals --qps: a job that
sent more would collect 429s, which the server counts.
"""
import glob
import json
import os
import subprocess
import sys

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.workers import worker_processes
from pipeline.run import run
from tests.helpers import (assert_accounted, labelled_images, read_dead_letters, read_predictions,
                           ROOT)

LABELS = ["red", "green", "blue", "yellow", "cyan", "magenta", "white", "black"] * 5
QPS = 8.0
JOB_TIMEOUT_S = 300  # a bound for a hung job on a loaded machine, not a speed check
# Generous bounds for a noisy 2-core machine: per wall-clock second, admitted requests may
# exceed the rate by phase jitter between the two processes, never by a second share.
PER_SECOND_SLACK = 1.5
MAX_QUOTA_429 = 2


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    truth = labelled_images(folder, LABELS)
    corrupt = folder / "corrupt.jpg"
    corrupt.write_bytes(b"this is not a JPEG")
    return folder, truth, str(corrupt)


def job_flags(folder, endpoint, output):
    return ["--input", str(folder), "--endpoint", endpoint, "--output", str(output),
            "--max_instances_per_request", "1", "--max_concurrent_requests", "4"]


def read_summary(output):
    (path,) = glob.glob(f"{output}-*-summary.json")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def run_multi_process(flags, log_path):
    argv = [sys.executable, "-m", "pipeline.run", *flags,
            "--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]
    with open(log_path, "w", encoding="utf-8") as log:
        done = subprocess.run(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, timeout=JOB_TIMEOUT_S)
    with open(log_path, encoding="utf-8") as log:
        assert done.returncode == 0, log.read()[-4000:]


def test_two_worker_processes_predict_the_same_keys_within_the_job_qps(
        inputs, server, make_server, tmp_path):
    folder, truth, corrupt = inputs

    single_out = tmp_path / "single" / "predictions"
    single = run(job_flags(folder, server.endpoint("mlengine"), single_out))
    assert_accounted(single)

    limited = make_server(quota_qps=QPS, latency_ms=20)
    multi_out = tmp_path / "multi" / "predictions"
    run_multi_process(job_flags(folder, limited.endpoint("mlengine"), multi_out)
                      + ["--qps", str(QPS)], tmp_path / "multi.log")
    multi = read_summary(multi_out)
    assert_accounted(multi)
    stats = limited.stats()

    single_keys = [r["key"] for r in read_predictions(str(single_out))]
    multi_keys = [r["key"] for r in read_predictions(str(multi_out))]
    assert len(multi_keys) == len(set(multi_keys)), "a key was predicted twice"
    assert set(multi_keys) == set(single_keys) == set(truth)
    assert {r["key"] for r in read_dead_letters(f"{multi_out}-errors")} == \
        {r["key"] for r in read_dead_letters(f"{single_out}-errors")} == {corrupt}
    for summary in (single, multi):
        assert (summary["inputs"], summary["predicted"], summary["failed"]) == \
            (len(truth) + 1, len(truth), 1)

    per_second = stats["per_second"]
    admitted = sum(per_second.values())
    span = max(per_second) - min(per_second) + 1
    full_seconds = sorted(per_second)[1:-1] or sorted(per_second)
    print(f"\nmulti-process job at --qps {QPS:g}: {admitted} requests admitted over {span} s "
          f"({admitted / span:.1f}/s overall); per second: "
          f"{[per_second[s] for s in sorted(per_second)]}; quota 429s: {stats['quota_429']}; "
          f"peak in flight {stats['max_in_flight']}")
    assert admitted == len(truth)  # one image per request, each admitted once
    assert stats["quota_429"] <= MAX_QUOTA_429, stats
    assert max(per_second[s] for s in full_seconds) <= QPS * PER_SECOND_SLACK + 1, per_second


@pytest.mark.parametrize("flags, processes", [
    ([], 1),
    (["--direct_num_workers=2", "--direct_running_mode=multi_processing"], 2),
    (["--direct_num_workers=2", "--direct_running_mode=multi_threading"], 1),
    (["--direct_num_workers=2"], 1),  # in_memory: one process whatever the count
    (["--direct_num_workers=0", "--direct_running_mode=multi_processing"], os.cpu_count()),
    (["--direct_num_workers=2", "--direct_running_mode=multi_processing",
      "--qps_worker_processes=5"], 5),
])
def test_direct_runner_processes_sharing_qps(flags, processes):
    assert worker_processes(PipelineOptions(flags)) == processes
