"""Dataflow is told when the endpoint throttles: the seconds spent backing off from 429 and
503 answers are reported as Beam's `cumulativeThrottlingSeconds` (the counter Dataflow's
autoscaler reads), beside `throttled_ms` and `backoff_throttled_ms`; waits for a `--qps` turn
are not, since more workers is what raises a job's rate under --qps."""
import json

from pipeline.run import run
from tests.helpers import assert_accounted, labelled_images
from transforms.metrics import THROTTLING_SECONDS

LABELS = ["red", "green", "blue", "yellow"]


def job_counters(folder, endpoint, out, *flags):
    summary = run(["--input", str(folder), "--endpoint", endpoint, "--output", str(out),
                   "--max_instances_per_request", "1", "--max_concurrent_requests", "4",
                   "--max_retries", "10", *flags])
    assert_accounted(summary)
    with open(f"{summary['output']}-metrics.json", encoding="utf-8") as f:
        return summary, json.load(f)["counters"]


def test_backoff_from_429_answers_is_reported_as_cumulative_throttling_seconds(
        tmp_path, make_server):
    folder = tmp_path / "images"
    labelled_images(folder, [LABELS[i % 4] for i in range(24)], fmt_cycle=("png",),
                    size=(8, 8))
    throttling = make_server(fail_429_rate=0.3, seed=7)
    summary, counters = job_counters(folder, throttling.endpoint("mlengine"), tmp_path / "p")
    assert summary["predicted"] == 24
    assert summary["retries_by_cause"]["http_429"] >= 3
    waited_ms = counters.get("backoff_throttled_ms", 0) + counters.get("throttled_ms", 0)
    assert waited_ms > 0, counters  # each retry waited a random 0..0.5 s and longer backoff
    # whole seconds, the fractions carried over: at most one second short of the waits
    assert waited_ms // 1000 - 1 <= counters[THROTTLING_SECONDS] <= waited_ms / 1000 + 1


def test_waits_for_a_qps_turn_are_not_throttling(tmp_path, server):
    folder = tmp_path / "images"
    labelled_images(folder, [LABELS[i % 4] for i in range(12)], fmt_cycle=("png",),
                    size=(8, 8))
    summary, counters = job_counters(folder, server.endpoint("mlengine"), tmp_path / "p",
                                     "--qps", "4")
    assert summary["predicted"] == 12 and summary["retries"] == 0
    assert summary["elapsed_s"] >= 2  # 12 requests at 4 a second wait for their turns
    assert counters.get(THROTTLING_SECONDS, 0) == 0
    assert counters.get("backoff_throttled_ms", 0) == counters.get("throttled_ms", 0) == 0
