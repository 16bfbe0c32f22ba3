"""The run report: its numbers from a run's files, and the page in a real headless Chromium."""
import collections
import datetime
import glob
import json
import os
import re
import shutil
import subprocess

import pytest

from pipeline import report
from pipeline.run import main, run
from tests.helpers import assert_accounted, labelled_images
from transforms import metrics

LABELS = ["red", "green", "blue", "yellow", "cyan", "magenta", "white", "black"] * 4
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                  "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000"]


def test_latency_buckets_are_upper_bounds():
    assert metrics.latency_bucket(0) == "latency_le_5ms"
    assert metrics.latency_bucket(5) == "latency_le_5ms"
    assert metrics.latency_bucket(6) == "latency_le_10ms"
    assert metrics.latency_bucket(60001) == "latency_le_infms"


def test_percentiles_come_from_the_bucket_counters():
    counters = {"latency_le_10ms": 50, "latency_le_100ms": 40, "latency_le_1000ms": 9,
                "latency_le_infms": 1}
    assert report.latency_percentiles(counters) == {
        "p50": "≤ 10 ms", "p90": "≤ 100 ms", "p99": "≤ 1000 ms"}
    assert sum(n for _, n in report.latency_histogram(counters)) == 100
    assert report.latency_percentiles({})["p50"] is None


def test_tally_keeps_the_least_confident_and_counts_labels():
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    rows = [{"key": f"k{i}", "top_label": "cat" if i % 3 else "dog", "top_score": i / 100,
             "predicted_at": start + datetime.timedelta(seconds=i)} for i in range(100)]
    tally = report.tally_predictions(rows)
    assert [key for _, key, _ in tally["least_confident"]] == \
        [f"k{i}" for i in range(report.CONTACT_SHEET_SIZE)]
    assert tally["labels"] == collections.Counter({"cat": 66, "dog": 34})
    assert sum(tally["scores"]) == 100 and tally["scores"][0] == 5
    width, series = report.time_series(tally["times"])
    assert width == 1 and len(series) == 100


def test_time_series_is_bounded():
    times = collections.Counter({second: 2 for second in range(0, 100_000, 7)})
    width, series = report.time_series(times)
    assert len(series) <= report.MAX_TIME_BINS
    assert sum(y * width for _, y in series) == sum(times.values())


def test_failures_group_by_stage_and_message_with_a_few_keys():
    rows = [{"key": f"k{i}", "stage": "decode", "error": "bad" if i < 5 else "worse",
             "failed_at": "2026-01-01 00:00:00.000000"} for i in range(7)]
    rows.append({"key": "p", "stage": "predict", "error": "HTTP 400"})
    tally = report.tally_failures(rows)
    assert tally["stages"]["decode"]["count"] == 7
    assert tally["stages"]["decode"]["top"][0] == ("bad", 5, ["k0", "k1", "k2"])
    assert tally["stages"]["predict"]["top"] == [("HTTP 400", 1, ["p"])]


@pytest.fixture(scope="module")
def reported_run(tmp_path_factory, session_server):
    """A run with --report: 32 images and a corrupt file against the local server."""
    tmp = tmp_path_factory.mktemp("reported")
    labelled_images(tmp / "images", LABELS)
    (tmp / "images" / "corrupt.jpg").write_bytes(b"this is not a JPEG")
    summary = run(["--input", str(tmp / "images"), "--endpoint",
                   session_server.endpoint("mlengine"), "--max_instances_per_request", "4",
                   "--output", str(tmp / "out" / "pred"), "--report"])
    return summary


def test_a_run_with_report_writes_metrics_and_a_self_contained_page(reported_run):
    assert_accounted(reported_run)
    prefix = reported_run["output"]
    assert reported_run["report"] == f"{prefix}-report.html"
    with open(f"{prefix}-metrics.json", encoding="utf-8") as f:
        counters = json.load(f)["counters"]
    buckets = {k: v for k, v in counters.items() if k.startswith("latency_le_")}
    assert sum(buckets.values()) == counters["requests"] == reported_run["requests"]
    with open(reported_run["report"], encoding="utf-8") as f:
        page = f.read()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "<link" not in page and "<script src" not in page
    assert page.count('<img src="data:image/jpeg;base64,') == report.CONTACT_SHEET_SIZE
    assert "not a recognised image format" in page and "corrupt.jpg" in page
    for label in set(LABELS):
        assert f">{label}</text>" in page


def test_report_subcommand_remakes_the_page_from_the_files(reported_run, tmp_path, capsys):
    copy = tmp_path / "copy"
    copy.mkdir()
    prefix = reported_run["output"]
    for path in glob.glob(f"{prefix}-*") + glob.glob(f"{reported_run['errors']}-*"):
        if not path.endswith("-report.html"):
            shutil.copy(path, copy)
    moved = str(copy / os.path.basename(prefix))
    summary_path = f"{moved}-summary.json"
    with open(summary_path, encoding="utf-8") as f:
        summary = json.load(f)
    summary["errors"] = str(copy / os.path.basename(reported_run["errors"]))
    with open(summary_path, "w", encoding="utf-8") as f:
        json.dump(summary, f)
    assert main(["report", moved]) == 0
    assert capsys.readouterr().out.strip() == f"{moved}-report.html"
    with open(f"{moved}-report.html", encoding="utf-8") as f:
        page = f.read()
    assert "not a recognised image format" in page
    assert page.count('<img src="data:image/jpeg;base64,') == report.CONTACT_SHEET_SIZE


def test_report_subcommand_without_a_run_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no run summary" in err
    assert main(["report"]) == 2


@pytest.fixture(scope="session")
def chromium():
    """Debian's chromium, installed here when missing (skips only where apt cannot)."""
    path = shutil.which("chromium")
    if path:
        return path
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip("chromium is not installed and apt-get (as root) is unavailable")
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        subprocess.run(command, check=True, capture_output=True, timeout=900,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return shutil.which("chromium")


def browse(chromium, path, tmp_path, *extra):
    """(DOM after load, console lines, stdout) of a page in headless Chromium."""
    done = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path}/profile",
                           *extra, f"file://{path}"], capture_output=True, text=True,
                          timeout=180, check=False)
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return done.stdout, console


def test_chromium_reports_console_errors_of_a_broken_page(chromium, tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    _, console = browse(chromium, page, tmp_path, "--dump-dom")
    assert any("Uncaught ReferenceError" in line for line in console)


def test_the_report_renders_in_chromium_with_its_plots_and_thumbnails(
        chromium, reported_run, tmp_path):
    dom, console = browse(chromium, reported_run["report"], tmp_path, "--dump-dom")
    assert console == []
    root = re.search(r"<html[^>]*>", dom).group(0)
    assert 'data-plots="5"' in root  # throughput, latency, failures, labels, scores
    assert f'data-images-shown="{report.CONTACT_SHEET_SIZE}"' in root
    assert 'data-images-broken="0"' in root
    assert dom.count('class="bar"') > 20 and 'class="series"' in dom
    shot = tmp_path / "report.png"
    browse(chromium, reported_run["report"], tmp_path, "--window-size=1100,2400",
           f"--screenshot={shot}")
    assert shot.stat().st_size > 20_000
