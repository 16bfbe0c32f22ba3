"""The run report: one self-contained HTML file made from a run's files alone.

`batch-predict report <run prefix>` (the `output` of a run's summary, local or `gs://`) reads
`<prefix>-summary.json`, `<prefix>-metrics.json` (the job's Beam counters, written at the end of
the run), the prediction shards `<prefix>-*.parquet` (or `.jsonl`) and the dead letters under the
summary's `errors` prefix, and writes `<prefix>-report.html`: summary, throughput over time,
request latency, retries, failures, labels, scores and a contact sheet of the least confident
images (thumbnails read from the inputs through Beam's FileSystems). Plots are inline SVG made
here; the page loads nothing from anywhere.
"""
import base64
import collections
import datetime
import heapq
import io
import json
import math
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from apache_beam.io.filesystems import FileSystems

from core.paths import quote_glob
from pipeline.charts import bar_list, column_chart, E, line_chart, table
from transforms import metrics
from transforms.commit import matching

CONTACT_SHEET_SIZE = 24
THUMBNAIL_PX = 160
MAX_THUMBNAIL_SOURCE_BYTES = 32 * 1024 * 1024
TOP_LABELS = 20
TOP_ERRORS = 10
KEYS_PER_ERROR = 3
SCORE_BINS = 20
MAX_TIME_BINS = 120
ERROR_TEXT_CHARS = 300


class ReportError(ValueError):
    """The run's files cannot make a report (one line for the user)."""


# --------------------------------------------------------------------------
# The run's files
# --------------------------------------------------------------------------


def read_text(path: str) -> str:
    with FileSystems.open(path) as f:
        return f.read().decode("utf-8")


def read_summary(prefix: str) -> dict:
    try:
        return json.loads(read_text(f"{prefix}-summary.json"))
    except Exception as e:  # Beam's filesystems raise several types
        raise ReportError(f"no run summary at {prefix}-summary.json ({type(e).__name__})")


def read_metrics(prefix: str) -> dict:
    """The run's counters and distributions, or {} for a run written before they were kept."""
    if not matching(prefix, "-metrics.json"):
        return {}
    return json.loads(read_text(f"{prefix}-metrics.json"))


def prediction_rows(prefix: str) -> Iterable[dict]:
    """key, top_label, top_score and predicted_at of every prediction (Parquet, else JSONL)."""
    parquet = matching(prefix, "-*.parquet")
    if parquet:
        import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
        columns = ["key", "top_label", "top_score", "predicted_at"]
        for path in parquet:
            with FileSystems.open(path) as f:
                table = pq.read_table(io.BytesIO(f.read()), columns=columns)
            for batch in table.to_batches():
                yield from batch.to_pylist()
        return
    for path in matching(prefix, "-*.jsonl"):
        for line in read_text(path).splitlines():
            if line.strip():
                row = json.loads(line)
                row["predicted_at"] = parse_time(row.get("predicted_at"))
                yield row


def dead_letter_rows(errors_prefix: Optional[str]) -> Iterable[dict]:
    if not errors_prefix:
        return
    for path in matching(errors_prefix, "-*.jsonl"):
        for line in read_text(path).splitlines():
            if line.strip():
                yield json.loads(line)


def parse_time(text) -> Optional[datetime.datetime]:
    """A BigQuery-style `YYYY-MM-DD hh:mm:ss[.ffffff]` UTC timestamp (or an ISO one)."""
    if not text:
        return None
    if isinstance(text, datetime.datetime):
        return text
    try:
        stamp = datetime.datetime.fromisoformat(str(text).replace(" ", "T").replace("Z", ""))
    except ValueError:
        return None
    return stamp.replace(tzinfo=stamp.tzinfo or datetime.timezone.utc)


# --------------------------------------------------------------------------
# What the report shows, computed in one pass over the rows
# --------------------------------------------------------------------------


def score_bin(score: float) -> int:
    return min(SCORE_BINS - 1, max(0, int(score * SCORE_BINS)))


def tally_predictions(rows: Iterable[dict]) -> dict:
    """Label counts, score histogram, times and the least confident rows, in bounded memory."""
    labels = collections.Counter()
    scores = [0] * SCORE_BINS
    times = collections.Counter()
    lowest: List[Tuple[float, str, str]] = []  # a max-heap by score, as (-score, key, label)
    count = 0
    for row in rows:
        count += 1
        labels[row.get("top_label") or "(no label)"] += 1
        score = row.get("top_score")
        when = row.get("predicted_at")
        if when is not None:
            times[int(when.timestamp())] += 1
        if score is None:
            continue
        scores[score_bin(score)] += 1
        entry = (-score, row["key"], row.get("top_label") or "")
        if len(lowest) < CONTACT_SHEET_SIZE:
            heapq.heappush(lowest, entry)
        elif entry > lowest[0]:
            heapq.heapreplace(lowest, entry)
    least = sorted(((-s, key, label) for s, key, label in lowest))
    return {"count": count, "labels": labels, "scores": scores, "times": times,
            "least_confident": least}


def tally_failures(rows: Iterable[dict]) -> dict:
    """Per stage: count and the most frequent messages with a few keys each."""
    stages: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    keys: Dict[Tuple[str, str], List[str]] = collections.defaultdict(list)
    times = collections.Counter()
    for row in rows:
        stage = row.get("stage") or "unknown"
        message = str(row.get("error") or "")[:ERROR_TEXT_CHARS]
        stages[stage][message] += 1
        if len(keys[(stage, message)]) < KEYS_PER_ERROR:
            keys[(stage, message)].append(str(row.get("key")))
        when = parse_time(row.get("failed_at"))
        if when is not None:
            times[int(when.timestamp())] += 1
    return {"stages": {stage: {"count": sum(c.values()),
                               "top": [(m, n, keys[(stage, m)])
                                       for m, n in c.most_common(TOP_ERRORS)]}
                       for stage, c in sorted(stages.items())},
            "times": times}


def short_ms(ms: float) -> str:
    return f"{ms / 1000:g}s" if ms >= 1000 else f"{ms:g}"


def latency_histogram(counters: Dict[str, int]) -> List[Tuple[str, int]]:
    """(bucket's upper bound, requests) for every bucket, in order."""
    names = [f"{b}ms" for b in metrics.LATENCY_BUCKETS_MS] + ["infms"]
    labels = [short_ms(b) for b in metrics.LATENCY_BUCKETS_MS] + [
        f">{short_ms(metrics.LATENCY_BUCKETS_MS[-1])}"]
    return [(label, int(counters.get(metrics.LATENCY_BUCKET_PREFIX + name, 0)))
            for label, name in zip(labels, names)]


def latency_percentiles(counters: Dict[str, int]) -> Dict[str, Optional[str]]:
    """p50/p90/p99 as the upper bound of the bucket holding them."""
    bounds = list(metrics.LATENCY_BUCKETS_MS) + [math.inf]
    counts = [n for _, n in latency_histogram(counters)]
    total = sum(counts)
    result = {}
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        if not total:
            result[name] = None
            continue
        running, rank = 0, q * total
        for bound, n in zip(bounds, counts):
            running += n
            if running >= rank:
                result[name] = (f"≤ {bound:g} ms" if bound != math.inf
                                else f"> {bounds[-2]:g} ms")
                break
    return result


def time_series(times: collections.Counter) -> Tuple[float, List[Tuple[float, float]]]:
    """(bin width s, [(seconds since the first, images per second)]) in at most
    MAX_TIME_BINS bins."""
    if not times:
        return 1.0, []
    start, end = min(times), max(times)
    width = max(1, math.ceil((end - start + 1) / MAX_TIME_BINS))
    bins = [0] * ((end - start) // width + 1)
    for second, n in times.items():
        bins[(second - start) // width] += n
    return float(width), [(i * width, n / width) for i, n in enumerate(bins)]


# --------------------------------------------------------------------------
# Thumbnails
# --------------------------------------------------------------------------


def thumbnail(key: str) -> Optional[str]:
    """A JPEG data URI of the image at `key`, or None when it cannot be read as an image."""
    from PIL import Image  # pylint: disable=import-outside-toplevel
    try:
        sizes = FileSystems.match([quote_glob(key)], limits=[1])[0].metadata_list
        if not sizes or sizes[0].size_in_bytes > MAX_THUMBNAIL_SOURCE_BYTES:
            return None
        with FileSystems.open(key) as f:
            img = Image.open(io.BytesIO(f.read()))
            img.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            out = io.BytesIO()
            img.convert("RGB").save(out, "JPEG", quality=80)
    except Exception:  # pylint: disable=broad-except
        return None  # not a file, not an image, or unreadable now: the sheet says so
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


# --------------------------------------------------------------------------
# SVG plots and HTML
# --------------------------------------------------------------------------



STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;
max-width:980px;color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f3f5f8}
.tiles{display:flex;flex-wrap:wrap;gap:10px}.tile{background:#f3f5f8;border-radius:6px;
padding:8px 14px}.tile b{display:block;font-size:20px}.bad b{color:#b00020}
.sheet{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:10px}
.sheet figure{margin:0;background:#f7f7f7;padding:5px;border-radius:4px;font-size:12px}
.sheet img{display:block;max-width:160px;max-height:160px;margin:auto}
.sheet .missing{height:80px;display:flex;align-items:center;justify-content:center;color:#777}
code,.key{font-family:ui-monospace,Menlo,monospace;font-size:12px;word-break:break-all}
.empty{color:#777}.muted{color:#666}
"""


#: Marks on the page what rendered: plots, and thumbnails shown or broken (read by the tests
#: in a real browser, and visible to anyone who inspects the page).
CHECK_SCRIPT = """window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.querySelectorAll(".sheet img"));
  var root = document.documentElement.dataset;
  root.plots = document.querySelectorAll("svg.plot").length;
  root.imagesShown = images.filter(function (i) { return i.naturalWidth > 0; }).length;
  root.imagesBroken = images.length - root.imagesShown;
});"""


def tiles(summary: dict) -> str:
    names = ("inputs", "predicted", "failed", "skipped", "requests", "retries", "elapsed_s",
             "images_per_s")
    out = []
    for name in names:
        value = summary.get(name)
        bad = name == "failed" and value
        out.append(f'<div class="tile{" bad" if bad else ""}"><b>{E(str(value))}</b>'
                   f'{E(name.replace("_", " "))}</div>')
    accounted = summary.get("accounted")
    out.append(f'<div class="tile{"" if accounted else " bad"}"><b>'
               f'{"yes" if accounted else "NO"}</b>inputs accounted for</div>')
    return f'<div class="tiles">{"".join(out)}</div>'


def failures_html(failures: dict) -> str:
    if not failures["stages"]:
        return '<p class="empty">no dead letters</p>'
    parts = [bar_list([(s, v["count"]) for s, v in failures["stages"].items()],
                      "failures by stage")]
    for stage, info in failures["stages"].items():
        parts.append(f"<h3>{E(stage)}: {info['count']}</h3>")
        parts.append(table(("count", "error", "a few keys"), (
            (n, E(message), "<br>".join(f'<span class="key">{E(k)}</span>' for k in keys))
            for message, n, keys in info["top"])))
    return "".join(parts)


def contact_sheet(least: Sequence[Tuple[float, str, str]]) -> str:
    if not least:
        return '<p class="empty">no scored predictions</p>'
    figures = []
    for score, key, label in least:
        uri = thumbnail(key)
        picture = (f'<img src="{uri}" alt="{E(key)}">' if uri
                   else '<div class="missing">not readable now</div>')
        figures.append(f'<figure>{picture}<figcaption><b>{E(label)}</b> {score:.3f}<br>'
                       f'<span class="key">{E(key)}</span></figcaption></figure>')
    return f'<div class="sheet">{"".join(figures)}</div>'


def render(prefix: str, summary: dict, run_metrics: dict, predictions: dict,
           failures: dict) -> str:
    counters = run_metrics.get("counters", {})
    width, series = time_series(predictions["times"] + failures["times"])
    percentiles = latency_percentiles(counters)
    retries = sorted(summary.get("retries_by_cause", {}).items(), key=lambda kv: -kv[1])
    scores = [(f"{i / SCORE_BINS:.2f}", n) for i, n in enumerate(predictions["scores"])]
    latency = run_metrics.get("distributions", {}).get("latency_ms", {})
    sections = [
        f"<h1>Batch prediction run {E(str(summary.get('run_id', '')))}</h1>",
        f'<p class="muted">outputs <code>{E(prefix)}-*</code>; dead letters '
        f'<code>{E(str(summary.get("errors")))}-*</code></p>',
        tiles(summary),
        "<h2>Throughput over time</h2>",
        line_chart(series, "images finished per second", "img/s"),
        f'<p class="muted">predictions and dead letters by the time they were made, '
        f'in bins of {width:g} s</p>',
        "<h2>Request latency</h2>",
        table(("p50", "p90", "p99", "mean", "max", "requests"), [(
            E(str(percentiles["p50"])), E(str(percentiles["p90"])),
            E(str(percentiles["p99"])), E(f"{latency['mean']:.0f} ms" if latency else "-"),
            E(f"{latency['max']} ms" if latency else "-"),
            E(str(latency.get("count", "-"))))]),
        column_chart(latency_histogram(counters), "requests by latency", "requests"),
        '<p class="muted">requests by latency bucket (upper bound, ms unless marked s), '
        'from the run\'s Beam counters; percentiles are the bucket bounds that hold them</p>',
        "<h2>Retries by cause</h2>",
        bar_list(retries, "retries by cause") if retries
        else '<p class="empty">no retries</p>',
        "<h2>Failures</h2>", failures_html(failures),
        "<h2>Top labels</h2>",
        bar_list(predictions["labels"].most_common(TOP_LABELS), "top labels"),
        "<h2>Top score</h2>",
        column_chart(scores, "predictions by top score", "predictions", label_every=4),
        f"<h2>The {len(predictions['least_confident'])} least confident predictions</h2>",
        '<p class="muted">where mislabels are found</p>',
        contact_sheet(predictions["least_confident"]),
    ]
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Run report {E(str(summary.get('run_id', '')))}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(sections)}"
            f"<script>{CHECK_SCRIPT}</script></body></html>\n")


def make_report(prefix: str) -> str:
    """The report's HTML for the run at `prefix` (the `output` of its summary)."""
    summary = read_summary(prefix)
    predictions = tally_predictions(prediction_rows(prefix))
    failures = tally_failures(dead_letter_rows(summary.get("errors")))
    return render(prefix, summary, read_metrics(prefix), predictions, failures)


def report_path(prefix: str) -> str:
    return f"{prefix}-report.html"


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
