"""The run report: its numbers from a run's files, and the page in a real headless Chromium."""
import collections
import datetime
import glob
import json
import os
import re
import shutil
import subprocess
import threading

import numpy as np
import pyarrow as pa
import pytest

from pipeline import charts, latency, report, timeline, vectors
from pipeline.run import main, run
from tests import synthetic_runs
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
    found = latency.latency_percentiles(counters)
    assert found["p50"] == pytest.approx(10.0)
    assert found["p90"] == pytest.approx(100.0)
    assert found["p99"] == pytest.approx(1000.0)
    assert sum(n for _, n in latency.latency_histogram(counters)) == 100
    assert latency.latency_percentiles({})["p50"] is None


def test_percentiles_are_estimated_within_the_bucket_and_the_runs_range():
    """Requests of 930-1,203 ms: the estimate lies in that range, not at a bucket bound."""
    counters = {"latency_le_1000ms": 5, "latency_le_2500ms": 5}
    found = latency.latency_percentiles(counters, low=930, high=1203)
    assert 930 <= found["p50"] <= 1000 and 1000 < found["p90"] <= 1203
    assert found["p99"] == pytest.approx(1000 + 203 * 0.98)
    page = "".join(latency.latency_html({"counters": counters, "distributions": {
        "latency_ms": {"count": 10, "sum": 10660, "min": 930, "max": 1203, "mean": 1066}}}))
    assert "≈ 1,000 ms" in page and "estimates" in page and "2500 ms" not in page


def test_tally_keeps_the_least_confident_and_counts_labels():
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    rows = [{"key": f"k{i}", "top_label": "cat" if i % 3 else "dog", "top_score": i / 100,
             "predicted_at": start + datetime.timedelta(seconds=i)} for i in range(100)]
    tally = report.tally_predictions([pa.RecordBatch.from_pylist(rows)])
    assert [key for _, key, _ in tally["least_confident"]] == \
        [f"k{i}" for i in range(report.CONTACT_SHEET_SIZE)]
    assert tally["labels"] == collections.Counter({"cat": 66, "dog": 34})
    assert sum(tally["scores"]) == 100 and tally["scores"][0] == 5
    width, series = timeline.time_series(tally["times"])
    assert width == 2 and len(series) == 50
    assert sum(tally["times"].counts.values()) == 100
    assert series[-1][1] == pytest.approx(2 / 1.1)  # 2 records in the last 1.1 s


def time_counts(seconds):
    times = timeline.TimeCounts()
    times.add_us((np.asarray(seconds, dtype=np.float64) * 1e6).astype(np.int64))
    return times


def test_time_series_is_bounded():
    times = time_counts(np.repeat(np.arange(0, 100_000, 7), 2))
    width, series = timeline.time_series(times)
    assert len(series) <= timeline.MAX_TIME_BINS
    assert sum(y * width for _, y in series[:-1]) < 2 * len(range(0, 100_000, 7))


def test_time_counts_stay_bounded_over_a_long_run():
    times = time_counts(np.arange(0, 3_000_000, 3.7))  # a month, a record every 3.7 s
    assert len(times.counts) <= timeline.MAX_TIME_KEYS and times.step_ms == 100_000
    assert sum(times.counts.values()) == len(np.arange(0, 3_000_000, 3.7))


def tick_labels(svg):
    return re.findall(r'font-size="10">([^<]*)</text>', svg)


@pytest.mark.parametrize("span_s, width_s, first_ticks", [
    (2, 0.1, ["0 s", "0.5 s", "1.0 s", "1.5 s"]),
    (7200, 120, ["0:00", "0:30", "1:00", "1:30", "2:00"])])
def test_throughput_reads_on_a_short_and_a_long_run(span_s, width_s, first_ticks):
    """A 2-second run is drawn in 0.1 s bins with distinct ticks; a 2-hour run in 2 min."""
    spread = np.linspace(1000, 1000 + span_s, 4000, endpoint=False)
    width, series = timeline.time_series(time_counts(spread))
    assert width == pytest.approx(width_s) and 10 <= len(series) <= timeline.MAX_TIME_BINS
    labels = tick_labels(charts.line_chart(series, "t", "images per second", x_end=span_s))
    assert labels[:len(first_ticks)] == first_ticks and len(set(labels)) == len(labels)
    rates = [y for _, y in series]  # evenly spread records: the last, partial bin too
    assert max(rates) / min(rates) < 1.5


def test_axes_use_one_human_style_for_big_numbers():
    svg = charts.column_chart([("a", 1_000_000), ("b", 400_000)], "t", "predictions")
    y_ticks = re.findall(r'font-size="11">([^<]*)</text>', svg)
    assert y_ticks[:3] == ["0", "500k", "1.0M"]
    assert "e+" not in svg
    few = charts.column_chart([("a", 5), ("b", 3)], "t", "requests")
    assert re.findall(r'font-size="11">([^<]*)</text>', few)[:2] == ["0", "5"]  # no 2.5
    assert [charts.human(v) for v in (0, 0.25, 7.5, 1500, 250_000, 2_500_000)] == \
        ["0", "0.25", "7.5", "1.5k", "250k", "2.5M"]


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


# -- Runs written directly: everything failed, killed, embeddings ----------------------------

def test_a_run_where_everything_failed_says_what_there_is(tmp_path):
    keys = [f"/photos/img_{i:02d}.jpg" for i in range(23)]
    prefix = synthetic_runs.write_run(str(tmp_path), synthetic_runs.predictions([], 1),
                                      failed_keys=keys)
    page = report.make_report(prefix)
    assert "None" not in page and "The 0 " not in page
    assert "no latency recorded: no request finished" in page
    assert "none: the run has no scored predictions" in page
    assert "no labels: no predictions</p>" in page and "no scored predictions</p>" in page
    assert "<h3>predict: 23</h3>" in page and "connection refused" in page


def test_a_killed_run_reports_what_it_committed_marked_incomplete(tmp_path, capsys):
    """No summary, only the parts a kill -9 left: the report shows them, marked incomplete,
    from the run prefix or from the parts folder."""
    keys = [f"/photos/img_{i:04d}.jpg" for i in range(1000)]
    prefix = synthetic_runs.write_run(
        str(tmp_path), synthetic_runs.predictions(keys, 40), killed=True,
        failed_keys=["/photos/bad.jpg", "/photos/worse.jpg"], rows_per_file=300)
    assert not glob.glob(f"{prefix}-summary.json") and len(glob.glob(f"{prefix}.parts/*")) == 4
    for given in (prefix, f"{prefix}.parts/"):
        assert main(["report", given]) == 0
        assert capsys.readouterr().out.strip() == f"{prefix}-report.html"
    with open(f"{prefix}-report.html", encoding="utf-8") as f:
        page = f.read()
    assert "(incomplete)</h1>" in page and "Incomplete run." in page
    assert "1,000 predictions in" in page and "2 dead letters" in page
    assert "<b>1,000</b>predictions committed" in page
    assert "no latency recorded: the run wrote no counters" in page
    assert "<h3>predict: 2</h3>" in page


def test_a_killed_run_without_parts_is_still_refused_in_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / f"pred-{synthetic_runs.RUN_ID}")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no run summary" in err and "no committed" in err


def test_vector_tally_samples_a_bounded_number_and_counts_every_vector():
    rng = np.random.default_rng(1)
    tally = vectors.VectorTally(sample_size=100)
    for start in range(0, 1000, 250):
        rows = [{"key": f"k{i}", "embedding": rng.normal(size=8).astype(np.float32).tolist()}
                for i in range(start, start + 250)]
        rows[0]["embedding"] = None
        rows[1]["embedding"] = [1.0, 2.0]  # another length
        tally.add(pa.RecordBatch.from_pylist(rows, schema=pa.schema([
            ("key", pa.string()), synthetic_runs.EMBEDDING_FIELD])))
    assert tally.count == 992 and tally.other_lengths == 4 and tally.dimension == 8
    assert len(tally.keys) == 100 == len(set(tally.keys)) and tally.vectors.shape == (100, 8)
    html = vectors.section(tally, lambda key, size: None)
    assert "a uniform sample of 100 of the 992 vectors" in html
    assert "4 vectors had another length" in html


def test_near_duplicates_are_the_pairs_above_the_threshold_most_similar_first():
    base = np.eye(4, dtype=np.float32)
    vectors_ = np.vstack([base, base[0] * 3 + 0.01, base[1] + 0.2 * base[2]])
    keys = np.array(["a", "b", "c", "d", "a2", "b2"], dtype=object)
    found, pairs = vectors.near_duplicates(keys, vectors_)
    assert found == 2
    assert [(p.first, p.second) for p in pairs] == [("a", "a2"), ("b", "b2")]
    assert pairs[0].cosine > pairs[1].cosine >= vectors.NEAR_DUPLICATE_COSINE


@pytest.fixture(scope="module")
def embedding_run(tmp_path_factory):
    """The demo images with their real EfficientNet-Lite0 embeddings (the local server's model,
    run here), as the pipeline writes them in the `embedding` column."""
    from PIL import Image  # pylint: disable=import-outside-toplevel
    from localserver.classifiers import load_classifier  # pylint: disable=import-outside-toplevel
    from localserver.demo import make_demo_set  # pylint: disable=import-outside-toplevel
    tmp = tmp_path_factory.mktemp("embedded")
    make_demo_set(str(tmp / "images"), 24)
    keys = sorted(p for p in glob.glob(str(tmp / "images" / "**" / "*.*"), recursive=True)
                  if not p.endswith("corrupt.jpg"))
    images = []
    for key in keys:
        with Image.open(key) as img:
            images.append(img.convert("RGB"))
    found = load_classifier("efficientnet_lite0").infer(images, embed=True).embeddings
    table = synthetic_runs.predictions(keys, 3, embeddings=found)
    return synthetic_runs.write_run(str(tmp / "out"), table, latencies_ms=[40, 55, 61, 70]), keys


def stem(key):
    return os.path.basename(key).split("_")[0].split(".")[0]


def test_an_embeddings_run_shows_norms_a_projection_and_near_duplicates(embedding_run):
    prefix, keys = embedding_run
    page = report.make_report(prefix)
    assert f"{len(keys)} vectors of 1,280 numbers" in page
    assert f"The plots below use all {len(keys)}." in page
    assert 'aria-label="vectors by norm"' in page
    thumbs = re.findall(r'<image class="thumb" href="data:image/jpeg;base64,', page)
    assert len(thumbs) == min(len(keys), vectors.SCATTER_THUMBNAILS)
    pairs = re.findall(r'<tr><td>(0\.\d+|1\.0+)</td><td><figure><img src="data:image/jpeg'
                       r'[^"]*" alt="([^"]+)">.*?alt="([^"]+)"', page)
    assert pairs, "no near-duplicate pair shown"
    for cosine, first, second in pairs:  # copies of one photo, never two different photos
        assert float(cosine) >= vectors.NEAR_DUPLICATE_COSINE
        assert stem(first) == stem(second) or not {stem(first), stem(second)} & {
            "cat", "coffee", "rocket", "camera"}


def test_a_filesystem_that_does_not_answer_is_waited_for_once(tmp_path):
    """A read that hangs (gs:// with no network here) costs one timeout, not one per key."""
    release = threading.Event()
    calls = []

    def read(key, size):
        calls.append(key)
        if key.startswith("gs://"):
            release.wait(30)
        return "data:image/jpeg;base64,AAAA"

    thumbnails = report.Thumbnails(timeout_s=0.2, read=read)
    try:
        assert thumbnails("gs://b/1.jpg") is None and thumbnails("gs://b/2.jpg") is None
        assert thumbnails(str(tmp_path / "x.jpg")) == "data:image/jpeg;base64,AAAA"
    finally:
        release.set()
    assert calls == ["gs://b/1.jpg", str(tmp_path / "x.jpg")]
    assert "thumbnails on gs:// not shown" in thumbnails.note()


def test_the_embeddings_report_renders_in_chromium(chromium, embedding_run, tmp_path):
    prefix, keys = embedding_run
    page = report.write_report(prefix)
    dom, console = browse(chromium, page, tmp_path, "--dump-dom")
    assert console == []
    root = re.search(r"<html[^>]*>", dom).group(0)
    assert 'data-plots="6"' in root  # throughput, latency, labels, scores, norms, projection
    shown = int(re.search(r'data-images-shown="(\d+)"', root).group(1))
    assert shown >= report.CONTACT_SHEET_SIZE + 2 and 'data-images-broken="0"' in root
    assert dom.count('class="thumb"') == min(len(keys), vectors.SCATTER_THUMBNAILS)


def test_a_run_of_embeddings_only_shows_no_label_bars(tmp_path):
    """Vector-only answers (multimodal) have null labels: no '(no label)' bar, no sheet."""
    keys = [f"/photos/img_{i}.jpg" for i in range(30)]
    table = synthetic_runs.predictions(keys, 2, embeddings=np.random.default_rng(2).normal(
        size=(30, 16)).astype(np.float32))
    table = table.set_column(table.schema.get_field_index("top_label"), "top_label",
                             pa.nulls(30, pa.string()))
    table = table.set_column(table.schema.get_field_index("top_score"), "top_score",
                             pa.nulls(30, pa.float64()))
    page = report.make_report(synthetic_runs.write_run(str(tmp_path), table,
                                                       latencies_ms=[80] * 30))
    assert "no labels: the predictions hold none" in page and "(no label)" not in page
    assert "30 vectors of 16 numbers" in page and 'aria-label="top labels"' not in page


def test_many_near_duplicates_show_the_most_and_the_least_similar():
    rng = np.random.default_rng(4)
    base = rng.normal(size=(1, 32))
    noise = np.linspace(0.001, 0.1, 30)[:, None] * rng.normal(size=(30, 32))
    keys = np.array([f"k{i}" for i in range(30)], dtype=object)
    found, pairs = vectors.near_duplicates(keys, (base + noise).astype(np.float32))
    cosines = [p.cosine for p in pairs]
    assert found > vectors.MAX_PAIRS == len(pairs) and cosines == sorted(cosines, reverse=True)
    assert cosines[-1] == pytest.approx(min(
        c for c in (vectors.unit_rows(base + noise) @ vectors.unit_rows(base + noise).T)
        [np.triu_indices(30, 1)] if c >= vectors.NEAR_DUPLICATE_COSINE))
