"""`--limit N` (the first N inputs by key, the same N on every run) and `--dry_run` counting.

`LastKey` finds the N-th smallest distinct key (a global combine holding at most 3N + 64
strings at a time); `transforms.select.SelectTodo` takes that one key as a side input and
skips the records whose keys sort after it, counted as `skipped_over_limit`, so
`inputs == predicted + failed + skipped` still holds.
"""
from typing import Iterable, List

import apache_beam as beam

from core.records import ImageRef
from transforms import metrics

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


