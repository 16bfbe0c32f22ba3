"""--limit N (the first N inputs by key, the same on every run) and --dry_run (count and
estimate, send nothing, write nothing), end to end against the local server."""
import os
import subprocess
import sys

import pytest

from pipeline.estimate import estimate, estimate_line
from pipeline.options import ConfigError
from pipeline.run import run
from tests.helpers import assert_accounted, labelled_images, read_predictions, ROOT

LABELS = ["red", "green", "blue", "yellow"] * 5


def job(images, server, out, *extra):
    return run(["--input", str(images), "--endpoint", server.endpoint("mlengine"),
                "--output", str(out), *extra])


def test_limit_predicts_the_same_first_n_inputs_every_time(tmp_path, server):
    truth = labelled_images(tmp_path / "images", LABELS)
    first = job(tmp_path / "images", server, tmp_path / "a" / "pred", "--limit", "7")
    assert_accounted(first)
    assert first["predicted"] == 7 and first["skipped_by_reason"] == {"over_limit": 13}
    again = job(tmp_path / "images", server, tmp_path / "b" / "pred", "--limit", "7")
    keys_a = sorted(r["key"] for r in read_predictions(str(tmp_path / "a" / "pred")))
    keys_b = sorted(r["key"] for r in read_predictions(str(tmp_path / "b" / "pred")))
    assert keys_a == keys_b == sorted(truth)[:7]
    assert again["predicted"] == 7


def test_limit_with_skip_existing_grows_the_set(tmp_path, server):
    truth = labelled_images(tmp_path / "images", LABELS)
    out = tmp_path / "out" / "pred"
    job(tmp_path / "images", server, out, "--limit", "5", "--skip_existing")
    server.reset_stats()
    more = job(tmp_path / "images", server, out, "--limit", "12", "--skip_existing")
    assert more["predicted"] == 7 and server.stats()["instances"] == 7
    assert sorted(r["key"] for r in read_predictions(str(out))) == sorted(truth)[:12]


def test_dry_run_counts_and_estimates_and_sends_nothing(tmp_path, server):
    labelled_images(tmp_path / "images", LABELS)
    out = tmp_path / "out" / "pred"
    summary = job(tmp_path / "images", server, out, "--dry_run", "--limit", "15",
                  "--max_instances_per_request", "4", "--qps", "2")
    assert server.stats()["requests"] == 0
    assert not os.path.exists(tmp_path / "out")  # nothing written, not even the schema
    assert summary["images"] == 15 and summary["skipped"] == 5 and summary["accounted"]
    assert summary["requests"] == 4  # 15 images, 4 a request
    assert summary["estimated_s_at_qps"] == 2.0
    assert summary["image_bytes"] > 0 and summary["images_of_unknown_size"] == 0


def test_dry_run_from_the_command_line_prints_one_estimate_line(tmp_path, server):
    labelled_images(tmp_path / "images", LABELS[:6])
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.run", "--input", str(tmp_path / "images"),
         "--endpoint", server.endpoint("mlengine"), "--output", str(tmp_path / "o" / "p"),
         "--dry_run"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "dry run: 6 images, about 1 request at the current caps" in done.stderr
    assert server.stats()["requests"] == 0


def test_estimate_takes_the_larger_of_count_and_bytes():
    by_bytes = estimate(10, 3_000_000, 0, 32, 1_000_000, 0.0, 16, 2)
    assert by_bytes["requests"] == 4  # 3 MB of images -> 4 MB of base64 -> 4 bodies of 1 MB
    assert by_bytes["estimated_s_at_qps"] is None and by_bytes["requests_in_flight"] == 32
    assert estimate(100, 1000, 0, 32, 1_000_000, 4.0, 16, 1)["estimated_s_at_qps"] == 1.0


def test_estimate_line_for_a_small_job_says_one_round_and_tenths_of_a_second():
    unlimited = estimate_line(estimate(48, 30_000, 0, 32, 1_500_000, 0.0, 16, 1))
    assert unlimited.startswith("dry run: 48 images, about 2 requests at the current caps")
    assert "16 requests in flight, so about 1 x the endpoint's latency" in unlimited
    one = estimate_line(estimate(1, 600, 0, 32, 1_500_000, 20.0, 16, 1))
    assert "about 1 request at the current caps" in one
    assert one.endswith("at --qps about 0.1 s")
    long = estimate_line(estimate(32_000, 0, 32_000, 32, 1_500_000, 2.0, 16, 1))
    assert long.endswith("at --qps about 500 s")


def test_bad_limit_is_a_bad_invocation(tmp_path):
    labelled_images(tmp_path / "images", LABELS[:1])
    with pytest.raises(ConfigError, match="--limit must be at least 1"):
        run(["--input", str(tmp_path / "images"), "--endpoint", "http://127.0.0.1:9/m:predict",
             "--output", str(tmp_path / "o"), "--limit", "0"])


def test_the_summary_reports_listing_apart_from_prediction(tmp_path, server):
    """`--limit` over many files lists them all before the first request: that time is
    `listing_s`, and images_per_s is over the time from the first request on."""
    labelled_images(tmp_path / "images", ["red", "blue", "green", "white"] * 5)
    summary = job(tmp_path / "images", server, tmp_path / "out" / "pred", "--limit", "6")
    assert summary["predicted"] == 6
    assert 0 <= summary["listing_s"] <= summary["elapsed_s"]
    assert summary["predict_s"] == pytest.approx(summary["elapsed_s"] - summary["listing_s"],
                                                 abs=0.002)
    assert summary["images_per_s"] == pytest.approx(6 / summary["predict_s"], rel=0.05)
