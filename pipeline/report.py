"""The run report: one self-contained HTML file made from a run's files alone.

`batch-predict report <run prefix>` (the `output` of a run's summary, local or `gs://`) reads
the run's files (`pipeline.run_files`: its summary, counters, prediction shards and dead
letters; for a killed run, the parts it committed) and writes `<prefix>-report.html`: summary,
throughput over time, request latency, retries, failures, labels, scores, a contact sheet of
the least confident images (thumbnails read from the inputs through Beam's FileSystems) and,
for runs with embeddings, their norms, a 2-D projection and near-duplicate pairs
(`pipeline.vectors`). Plots are inline SVG made here; the page loads nothing from anywhere.
"""
import base64
import collections
import heapq
import io
import threading
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from core.paths import parts_dir, quote_glob
from pipeline.charts import bar_list, column_chart, count, E, line_chart, table
from pipeline.latency import latency_html
from pipeline.timeline import bin_text, time_series, TimeCounts, times_us
from pipeline.run_files import (dead_letter_rows, find_run, parse_time, prediction_batches,
                                prediction_rows, read_metrics, ReportError, RunFiles)
from pipeline.vectors import section as embeddings_section, VectorTally
from transforms import metrics

__all__ = ["ReportError", "prediction_rows", "make_report", "write_report", "run_metrics"]

CONTACT_SHEET_SIZE = 24
THUMBNAIL_PX = 160
MAX_THUMBNAIL_SOURCE_BYTES = 32 * 1024 * 1024
THUMBNAIL_TIMEOUT_S = 30.0
TOP_LABELS = 20
TOP_ERRORS = 10
KEYS_PER_ERROR = 3
SCORE_BINS = 20
ERROR_TEXT_CHARS = 300


# --------------------------------------------------------------------------
# What the report shows, computed in one pass over the rows
# --------------------------------------------------------------------------


def score_bin(score: float) -> int:
    return min(SCORE_BINS - 1, max(0, int(score * SCORE_BINS)))


def tally_predictions(batches: Iterable[pa.RecordBatch]) -> dict:
    """Label counts, score histogram, times, the least confident rows and the embeddings'
    tally, in bounded memory."""
    labels = collections.Counter()
    scores = [0] * SCORE_BINS
    times = TimeCounts()
    vectors = VectorTally()
    lowest: List[Tuple[float, str, str]] = []  # a max-heap by score, as (-score, key, label)
    total = 0
    for batch in batches:
        total += batch.num_rows
        if "predicted_at" in batch.schema.names:
            times.add_us(times_us(batch.column("predicted_at")))
        vectors.add(batch)
        for row in batch.select([c for c in ("key", "top_label", "top_score")
                                 if c in batch.schema.names]).to_pylist():
            if row.get("top_label") is not None:
                labels[row["top_label"]] += 1
            score = row.get("top_score")
            if score is None:
                continue
            scores[score_bin(score)] += 1
            entry = (-score, row["key"], row.get("top_label") or "")
            if len(lowest) < CONTACT_SHEET_SIZE:
                heapq.heappush(lowest, entry)
            elif entry > lowest[0]:
                heapq.heapreplace(lowest, entry)
    least = sorted(((-s, key, label) for s, key, label in lowest))
    return {"count": total, "labels": labels, "scores": scores, "times": times,
            "least_confident": least, "vectors": vectors}


def tally_failures(rows: Iterable[dict]) -> dict:
    """Per stage: count and the most frequent messages with a few keys each."""
    stages: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    keys: Dict[Tuple[str, str], List[str]] = collections.defaultdict(list)
    times = TimeCounts()
    stamps = []
    for row in rows:
        stage = row.get("stage") or "unknown"
        message = str(row.get("error") or "")[:ERROR_TEXT_CHARS]
        stages[stage][message] += 1
        if len(keys[(stage, message)]) < KEYS_PER_ERROR:
            keys[(stage, message)].append(str(row.get("key")))
        when = parse_time(row.get("failed_at"))
        if when is not None:
            stamps.append(int(when.timestamp() * 1_000_000))
        if len(stamps) >= 100_000:
            times.add_us(np.array(stamps, dtype=np.int64))
            stamps = []
    times.add_us(np.array(stamps, dtype=np.int64))
    return {"stages": {stage: {"count": sum(c.values()),
                               "top": [(m, n, keys[(stage, m)])
                                       for m, n in c.most_common(TOP_ERRORS)]}
                       for stage, c in sorted(stages.items())},
            "count": sum(sum(c.values()) for c in stages.values()),
            "times": times}


# --------------------------------------------------------------------------
# Thumbnails
# --------------------------------------------------------------------------


def thumbnail(key: str, size: int = THUMBNAIL_PX) -> Optional[str]:
    """A JPEG data URI of the image at `key`, or None when it cannot be read as an image."""
    from PIL import Image  # pylint: disable=import-outside-toplevel
    try:
        sizes = FileSystems.match([quote_glob(key)], limits=[1])[0].metadata_list
        if not sizes or sizes[0].size_in_bytes > MAX_THUMBNAIL_SOURCE_BYTES:
            return None
        with FileSystems.open(key) as f:
            img = Image.open(io.BytesIO(f.read()))
            img.thumbnail((size, size))
            out = io.BytesIO()
            img.convert("RGB").save(out, "JPEG", quality=80)
    except Exception:  # pylint: disable=broad-except
        return None  # not a file, not an image, or unreadable now: the sheet says so
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


class Thumbnails:
    """`thumbnail` with each read given at most `timeout_s`: once a read on a filesystem
    (e.g. `gs://` without network or credentials) takes longer, that filesystem's other keys
    are not tried, so the report never waits on it more than once."""

    def __init__(self, timeout_s: float = THUMBNAIL_TIMEOUT_S, read=None):
        self.timeout_s = timeout_s
        self.read = read or thumbnail
        self.unreachable: set = set()

    def __call__(self, key: str, size: int = THUMBNAIL_PX) -> Optional[str]:
        scheme = FileSystems.get_scheme(key) or "file"
        if scheme in self.unreachable:
            return None
        result: list = []
        worker = threading.Thread(target=lambda: result.append(self.read(key, size)),
                                  daemon=True)  # a stuck read must not hold the exit
        worker.start()
        worker.join(self.timeout_s)
        if worker.is_alive():
            self.unreachable.add(scheme)
            return None
        return result[0] if result else None

    def note(self) -> str:
        if not self.unreachable:
            return ""
        schemes = ", ".join(f"{s}://" for s in sorted(self.unreachable))
        return (f'<p class="muted">thumbnails on {E(schemes)} not shown: reading one took '
                f'over {self.timeout_s:g} s (no network or credentials here?)</p>')


# --------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------


STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;
max-width:980px;color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f3f5f8}
.tiles{display:flex;flex-wrap:wrap;gap:10px}.tile{background:#f3f5f8;border-radius:6px;
padding:8px 14px}.tile b{display:block;font-size:20px}.bad b{color:#b00020}
.warning{background:#fff4e5;border-left:4px solid #e08a00;padding:8px 12px}
.sheet{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:10px}
.sheet figure,.pairs figure{margin:0;background:#f7f7f7;padding:5px;border-radius:4px;
font-size:12px}.pairs figure{max-width:300px}
.sheet img{display:block;max-width:160px;max-height:160px;margin:auto}
.pairs img{display:block;max-width:96px;max-height:96px;margin:auto}
.missing{height:80px;display:flex;align-items:center;justify-content:center;color:#777}
code,.key{font-family:ui-monospace,Menlo,monospace;font-size:12px;word-break:break-all}
.empty{color:#777}.muted{color:#666}.bad-text{color:#b00020}
"""


#: Marks on the page what rendered: plots, and thumbnails shown or broken (read by the tests
#: in a real browser, and visible to anyone who inspects the page).
CHECK_SCRIPT = """window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.querySelectorAll(".sheet img, .pairs img"));
  var root = document.documentElement.dataset;
  root.plots = document.querySelectorAll("svg.plot").length;
  root.imagesShown = images.filter(function (i) { return i.naturalWidth > 0; }).length;
  root.imagesBroken = images.length - root.imagesShown;
});"""

TILES = (("inputs", "inputs"), ("predicted", "predicted"), ("failed", "failed"),
         ("skipped", "skipped"), ("requests", "requests"), ("retries", "retries"),
         ("elapsed_s", "seconds"), ("images_per_s", "images per s"))


def tile(value, label: str, bad: bool = False) -> str:
    return (f'<div class="tile{" bad" if bad else ""}"><b>{E(value)}</b>{E(label)}</div>')


def tiles(summary: dict, predicted: int, failed: int) -> str:
    if summary.get("incomplete"):
        return (f'<div class="tiles">{tile(count(predicted), "predictions committed")}'
                f'{tile(count(failed), "dead letters committed", bool(failed))}'
                f'{tile("unknown", "inputs", True)}</div>')
    out = []
    for name, label in TILES:
        value = summary.get(name)
        text = "–" if value is None else (f"{value:,.1f}" if isinstance(value, float)
                                          else count(value))
        out.append(tile(text, label, name == "failed" and bool(value)))
    accounted = summary.get("accounted")
    out.append(tile("yes" if accounted else "NO", "inputs accounted for", not accounted))
    return f'<div class="tiles">{"".join(out)}</div>'


def incomplete_note(files: RunFiles, predicted: int, failed: int) -> str:
    if files.complete:
        return ""
    return (f'<p class="warning"><b>Incomplete run.</b> It wrote no summary at '
            f'<code>{E(files.prefix)}-summary.json</code> (stopped before it finished, e.g. '
            f'killed), so its inputs, requests and latencies are unknown. This report shows '
            f'what it committed: {predicted:,} predictions in '
            f'<code>{E(parts_dir(files.prefix))}/</code> and {failed:,} dead letters. The same '
            'command with <code>--skip_existing</code> predicts only the rest '
            '(docs/crash-safety.md says when it takes these into its own outputs).</p>')


def failures_html(failures: dict) -> str:
    if not failures["stages"]:
        return '<p class="empty">no dead letters</p>'
    parts = [bar_list([(s, v["count"]) for s, v in failures["stages"].items()],
                      "failures by stage")]
    for stage, info in failures["stages"].items():
        parts.append(f"<h3>{E(stage)}: {info['count']:,}</h3>")
        parts.append(table(("count", "error", "a few keys"), (
            (f"{n:,}", E(message), "<br>".join(f'<span class="key">{E(k)}</span>'
                                               for k in keys))
            for message, n, keys in info["top"])))
    return "".join(parts)


def contact_sheet(least: Sequence[Tuple[float, str, str]], scored: int,
                  thumbnails: Thumbnails) -> str:
    if not least:
        return ("<h2>Least confident predictions</h2>"
                '<p class="empty">none: the run has no scored predictions</p>')
    head = (f"The {len(least)} least confident predictions" if scored > len(least)
            else f"All {len(least)} scored predictions, least confident first")
    figures = []
    for score, key, label in least:
        uri = thumbnails(key)
        picture = (f'<img src="{uri}" alt="{E(key)}">' if uri
                   else '<div class="missing">not readable now</div>')
        figures.append(f'<figure>{picture}<figcaption><b>{E(label)}</b> {score:.3f}<br>'
                       f'<span class="key">{E(key)}</span></figcaption></figure>')
    return (f"<h2>{head}</h2><p class=\"muted\">where mislabels are found</p>"
            f'<div class="sheet">{"".join(figures)}</div>{thumbnails.note()}')


def render(files: RunFiles, run_metrics: dict, predictions: dict, failures: dict) -> str:
    summary = files.summary
    thumbnails = Thumbnails()
    times = predictions["times"].merged(failures["times"])
    width, series = time_series(times)
    retries = sorted(summary.get("retries_by_cause", {}).items(), key=lambda kv: -kv[1])
    scores = [(f"{i / SCORE_BINS:.2f}", n) for i, n in enumerate(predictions["scores"])]
    title = f"Batch prediction run {summary.get('run_id', '')}" + (
        "" if files.complete else " (incomplete)")
    sections = [
        f"<h1>{E(title)}</h1>",
        f'<p class="muted">outputs <code>{E(files.prefix)}-*</code>; dead letters '
        f'<code>{E(str(summary.get("errors")))}-*</code></p>',
        incomplete_note(files, predictions["count"], failures["count"]),
        tiles(summary, predictions["count"], failures["count"]),
        "<h2>Throughput over time</h2>",
        line_chart(series, "images finished per second", "images per second",
                   x_end=times.span_s()),
        f'<p class="muted">predictions and dead letters by the time they were made, '
        f'in bins of {bin_text(width)}</p>',
        *latency_html(run_metrics),
        "<h2>Retries by cause</h2>",
        bar_list(retries, "retries by cause") if retries
        else '<p class="empty">no retries</p>',
        "<h2>Failures</h2>", failures_html(failures),
        "<h2>Top labels</h2>",
        bar_list(predictions["labels"].most_common(TOP_LABELS), "top labels")
        if predictions["labels"] else '<p class="empty">no labels: '
        + ("no predictions</p>" if not predictions["count"] else
           "the predictions hold none (embeddings only?)</p>"),
        "<h2>Top score</h2>",
        column_chart(scores, "predictions by top score", "predictions", label_every=4,
                     x_title="top score", empty="no scored predictions"),
        embeddings_section(predictions["vectors"], thumbnails),
        contact_sheet(predictions["least_confident"], sum(predictions["scores"]), thumbnails),
    ]
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Run report {E(str(summary.get('run_id', '')))}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(sections)}"
            f"<script>{CHECK_SCRIPT}</script></body></html>\n")


def make_report(prefix: str) -> str:
    """The report's HTML for the run at `prefix` (the `output` of its summary)."""
    files = find_run(prefix)
    predictions = tally_predictions(prediction_batches(files.predictions))
    failures = tally_failures(dead_letter_rows(files.dead_letters))
    return render(files, read_metrics(files.prefix), predictions, failures)


def report_path(prefix: str) -> str:
    return f"{prefix.rstrip('/').removesuffix('.parts')}-report.html"


def write_report(prefix: str) -> str:
    """Write `<prefix>-report.html`; returns its path."""
    text = make_report(prefix)
    path = report_path(prefix)
    with FileSystems.create(path, mime_type="text/html") as f:
        f.write(text.encode("utf-8"))
    return path


# --------------------------------------------------------------------------
# The metrics file written at the end of a run
# --------------------------------------------------------------------------


def run_metrics(result) -> dict:
    """The job's counters and distributions in the pipeline's namespace (committed values
    where the runner has them)."""
    from apache_beam.metrics.metric import MetricsFilter  # pylint: disable=import-outside-toplevel
    query = result.metrics().query(MetricsFilter().with_namespace(metrics.NAMESPACE))
    counters = collections.Counter()
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        counters[counter.key.metric.name] += value or 0
    distributions = {}
    for dist in query["distributions"]:
        value = dist.committed if dist.committed is not None else dist.attempted
        if value is None or not value.count:
            continue
        distributions[dist.key.metric.name] = {
            "count": value.count, "sum": value.sum, "min": value.min, "max": value.max,
            "mean": value.sum / value.count}
    return {"counters": dict(sorted(counters.items())), "distributions": distributions}


def metrics_path(prefix: str) -> str:
    return f"{prefix}-metrics.json"
