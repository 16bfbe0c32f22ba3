"""`--limit N` (the first N inputs by key, the same N on every run) and `--dry_run` counting.

`LastKey` finds the N-th smallest distinct key (a global combine holding at most 3N + 64
strings at a time); `transforms.select.SelectTodo` takes that one key as a side input and
skips the records whose keys sort after it, counted as `skipped_over_limit`, so
`inputs == predicted + failed + skipped` still holds.
"""
import math
from typing import Iterable, List

import apache_beam as beam

from transforms import metrics
from core.records import ImageRef

BASE64_GROWTH = 4 / 3


def smallest(keys: Iterable[str], n: int) -> List[str]:
    """The n smallest distinct keys, in order."""
    return sorted(set(keys))[:n]


class _LastKeyFn(beam.CombineFn):
    """The N-th smallest distinct key (the largest when there are fewer; None when none). A
    key may come many times (one record per input that names it), so Top.Smallest, which
    keeps repeats, would find fewer than N keys."""

    def __init__(self, n: int):
        if n < 1:
            raise ValueError("--limit must be at least 1")
        self._n = n

    def create_accumulator(self):
        return []

    def add_input(self, keys, key):
        keys.append(key)
        if len(keys) >= 2 * self._n + 64:
            keys[:] = smallest(keys, self._n)
        return keys

    def merge_accumulators(self, accumulators):
        merged = []
        for keys in accumulators:
            merged = smallest(merged + list(keys), self._n)
        return merged

    def extract_output(self, keys):
        keys = smallest(keys, self._n)
        return keys[-1] if keys else None


class LastKey(beam.PTransform):
    """Keys -> the last key within the first N (a singleton; None when there are no keys)."""

    def __init__(self, n: int):
        super().__init__()
        self._fn = _LastKeyFn(n)

    def expand(self, keys):
        return keys | "LastKey" >> beam.CombineGlobally(self._fn)


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
    requests = result["requests"]
    line = (f"dry run: {result['images']} images, about {requests} "
            f"request{'' if requests == 1 else 's'} at the current caps, sending nothing")
    seconds = result["estimated_s_at_qps"]
    if seconds is not None:
        line += f"; at --qps about {seconds:.1f} s" if seconds < 10 else \
            f"; at --qps about {seconds:.0f} s"
    else:
        rounds = math.ceil(requests / result["requests_in_flight"])
        line += (f"; no --qps: {result['requests_in_flight']} requests in flight, so about "
                 f"{rounds} x the endpoint's latency")
    return line
