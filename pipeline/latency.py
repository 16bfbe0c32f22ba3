"""Request latency in the run report, from the run's Beam counters.

Beam's distributions keep only min / max / mean / count, so every request's latency also
increments one counter per bucket (`transforms/metrics.py`: `LATENCY_BUCKETS_MS`). The
percentiles are estimated from those buckets: linear within the bucket that holds each, the
bucket narrowed to the run's fastest and slowest request, and the page says so.
"""
import math
from typing import Dict, List, Optional, Tuple

from pipeline.charts import column_chart, count, E, table
from transforms import metrics


def short_ms(ms: float) -> str:
    return f"{ms / 1000:g}s" if ms >= 1000 else f"{ms:g}"


def latency_histogram(counters: Dict[str, int]) -> List[Tuple[str, int]]:
    """(bucket's upper bound, requests) for every bucket, in order."""
    names = [f"{b}ms" for b in metrics.LATENCY_BUCKETS_MS] + ["infms"]
    labels = [short_ms(b) for b in metrics.LATENCY_BUCKETS_MS] + [
        f">{short_ms(metrics.LATENCY_BUCKETS_MS[-1])}"]
    return [(label, int(counters.get(metrics.LATENCY_BUCKET_PREFIX + name, 0)))
            for label, name in zip(labels, names)]


def latency_percentiles(counters: Dict[str, int], low: Optional[float] = None,
                        high: Optional[float] = None) -> Dict[str, Optional[float]]:
    """Estimated p50/p90/p99 in ms: linear within the bucket that holds each, the bucket's
    bounds narrowed to the run's fastest (`low`) and slowest (`high`) request when known.
    None when no request latency was counted."""
    lowers = [0.0] + [float(b) for b in metrics.LATENCY_BUCKETS_MS]
    uppers = [float(b) for b in metrics.LATENCY_BUCKETS_MS] + [math.inf]
    counts = [n for _, n in latency_histogram(counters)]
    total = sum(counts)
    result: Dict[str, Optional[float]] = {}
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        result[name] = None
        running, rank = 0, q * total
        for lower, upper, n in zip(lowers, uppers, counts):
            if n and running + n >= rank:
                lower = max(lower, low) if low is not None else lower
                upper = min(upper, high) if high is not None else upper
                upper = max(upper, lower) if upper != math.inf else lower
                result[name] = lower + (upper - lower) * (rank - running) / n
                break
            running += n
    return result


def format_ms(ms: Optional[float]) -> str:
    if ms is None:
        return "–"
    return f"≈ {ms:,.1f} ms" if ms < 10 else f"≈ {ms:,.0f} ms"


def latency_html(run_metrics: dict) -> List[str]:
    counters = run_metrics.get("counters", {})
    latency = run_metrics.get("distributions", {}).get("latency_ms", {})
    percentiles = latency_percentiles(counters, latency.get("min"), latency.get("max"))
    if percentiles["p50"] is None:
        why = ("the run wrote no counters" if not run_metrics
               else "no request finished")
        return ["<h2>Request latency</h2>", f'<p class="empty">no latency recorded: {why}</p>']
    return [
        "<h2>Request latency</h2>",
        table(("p50", "p90", "p99", "mean", "min", "max", "requests"), [(
            E(format_ms(percentiles["p50"])), E(format_ms(percentiles["p90"])),
            E(format_ms(percentiles["p99"])),
            E(f"{latency['mean']:,.0f} ms" if latency else "–"),
            E(f"{latency['min']:,} ms" if latency else "–"),
            E(f"{latency['max']:,} ms" if latency else "–"),
            E(count(latency.get("count", "–"))))]),
        '<p class="muted">percentiles are estimates: the run counts requests in latency '
        'buckets, and each percentile is placed linearly within its bucket, narrowed to the '
        'fastest and slowest request; mean, min and max are exact</p>',
        column_chart(latency_histogram(counters), "requests by latency", "requests",
                     x_title="latency bucket (upper bound, ms unless marked s)"),
    ]
