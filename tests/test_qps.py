"""`--qps` against a strict quota: the local server admits at most `quota_qps` requests per
calendar second and answers the next one 429. A job at `--qps` equal to that quota must
collect no quota 429 and still run at the rate it was given, in one worker process and in two
(DirectRunner multi_processing: each process paces its share, qps / 2)."""
import glob
import json
import subprocess
import sys

import pytest

from localserver.demo import LABEL_COLOURS
from pipeline.run import run
from tests.helpers import assert_accounted, labelled_images, ROOT

pytestmark = pytest.mark.alone  # a loaded machine delays sends into the quota's next second

QPS = 20
REQUESTS = 400
JOB_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qps_images")
    labels = list(LABEL_COLOURS)
    labelled_images(folder, [labels[i % len(labels)] for i in range(REQUESTS)],
                    fmt_cycle=("png",), size=(8, 8))
    return folder


def job_flags(folder, endpoint, output):
    return ["--input", str(folder), "--endpoint", endpoint, "--output", str(output),
            "--qps", str(QPS), "--max_instances_per_request", "1",
            "--max_concurrent_requests", "16"]


def full_second_rate(per_second):
    """Mean admitted requests per second over the full seconds (first and last are partial)."""
    seconds = sorted(per_second)[1:-1]
    assert len(seconds) >= 10, per_second
    return sum(per_second[s] for s in seconds) / len(seconds)


def check_quota_held(stats, summary):
    assert_accounted(summary)
    assert summary["predicted"] == REQUESTS, summary
    rate = full_second_rate({int(k): v for k, v in stats["per_second"].items()})
    print(f"\n--qps {QPS}: {stats['requests']} requests, {stats['quota_429']} quota 429s, "
          f"{rate:.2f}/s over full seconds")
    assert stats["quota_429"] == 0, stats["per_second"]
    assert stats["requests"] == REQUESTS
    assert rate == pytest.approx(QPS, rel=0.05), stats["per_second"]


def test_qps_holds_a_strict_per_second_quota_in_one_process(images, make_server, tmp_path):
    server = make_server(quota_qps=QPS)
    summary = run(job_flags(images, server.endpoint("mlengine"), tmp_path / "pred"))
    check_quota_held(server.stats(), summary)


def test_qps_holds_a_strict_per_second_quota_with_two_worker_processes(
        images, make_server, tmp_path):
    server = make_server(quota_qps=QPS)
    output = tmp_path / "pred"
    argv = [sys.executable, "-m", "pipeline.run",
            *job_flags(images, server.endpoint("mlengine"), output),
            "--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=JOB_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-4000:]
    (path,) = glob.glob(f"{output}-*-summary.json")
    with open(path, encoding="utf-8") as f:
        summary = json.load(f)
    check_quota_held(server.stats(), summary)
