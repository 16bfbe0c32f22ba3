"""`--limit N` (the first N inputs by key, the same N on every run) and `--dry_run` counting.

`FirstN` keeps the N smallest keys: a global Top combine of keys (N strings held per
combiner), then a filter with that set as a side input. The rest are skipped, counted as
`skipped_over_limit`, so `inputs == predicted + failed + skipped` still holds.
"""
import math
from typing import Iterable, List

import apache_beam as beam

from transforms import metrics
from transforms.records import ImageRef

SKIPPED = "skipped"
BASE64_GROWTH = 4 / 3


def ref_key(ref: ImageRef) -> str:
    return ref.key


def within(ref: ImageRef, first: frozenset):
    """`ref` if its key is among the first N; else a skipped (key, reason), counted."""
    if ref.key in first:
        yield ref
        return
    metrics.counter("skipped_over_limit").inc()
    metrics.counter("skipped").inc()
    yield beam.pvalue.TaggedOutput(SKIPPED, (ref.key, "skipped_over_limit"))


def as_set(keys: List[str]) -> frozenset:
    return frozenset(keys)


class FirstN(beam.PTransform):
    """ImageRefs -> the N with the smallest keys (main) and (key, reason) of the rest."""

    def __init__(self, n: int):
        super().__init__()
        if n < 1:
            raise ValueError("--limit must be at least 1")
        self._n = n

    def expand(self, refs):
        first = (refs
                 | "Keys" >> beam.Map(ref_key)
                 | "Smallest" >> beam.combiners.Top.Smallest(self._n)
                 | "AsSet" >> beam.Map(as_set))
        return refs | "Within" >> beam.FlatMap(
            within, beam.pvalue.AsSingleton(first)).with_outputs(SKIPPED, main="refs")


def count_for_estimate(ref: ImageRef) -> Iterable[ImageRef]:
    """Counts a ref a dry run would send, and its bytes when the listing gave a size."""
    metrics.counter("dry_run_images").inc()
    if ref.size is not None:
        metrics.counter("dry_run_bytes").inc(ref.size)
    else:
        metrics.counter("dry_run_unsized").inc()
    return ()


class CountForEstimate(beam.PTransform):
    """ImageRefs -> nothing; counters for the dry-run estimate."""

    def expand(self, refs):
        return refs | "Count" >> beam.FlatMap(count_for_estimate)


def estimate(images: int, sized_bytes: int, unsized: int, max_instances: int,
             max_request_bytes: int, qps: float, concurrency: int, processes: int) -> dict:
    """Requests at the current caps and a time estimate (a lower bound where sizes are
    unknown: base64 makes a body ~4/3 of the image bytes)."""
    by_count = math.ceil(images / max_instances) if images else 0
    by_bytes = math.ceil(sized_bytes * BASE64_GROWTH / max_request_bytes) if sized_bytes else 0
    requests = max(by_count, by_bytes)
    return {
        "images": images,
        "image_bytes": sized_bytes,
        "images_of_unknown_size": unsized,
        "requests": requests,
        "requests_in_flight": concurrency * processes,
        "estimated_s_at_qps": round(requests / qps, 1) if qps else None,
    }


def estimate_line(result: dict) -> str:
    line = (f"dry run: {result['images']} images, about {result['requests']} requests "
            f"at the current caps, sending nothing")
    if result["estimated_s_at_qps"] is not None:
        line += f"; at --qps about {result['estimated_s_at_qps']:.0f} s"
    else:
        line += (f"; no --qps: {result['requests_in_flight']} requests in flight, so about "
                 f"{result['requests'] / result['requests_in_flight']:.0f} x the endpoint's "
                 "latency")
    return line
