"""Beam metrics of the pipeline, all under one namespace so the launcher can total them."""
import collections
import functools
import threading

from apache_beam.io.components.adaptive_throttler import ThrottlingSignaler
from apache_beam.metrics import Metrics

NAMESPACE = "batch_predict"


@functools.lru_cache(maxsize=None)
def counter(name: str):
    """The counter `name` (cached: it finds the current bundle's container at each inc)."""
    return Metrics.counter(NAMESPACE, name)


#: Epoch milliseconds at which each bundle of Predict sent its first request.
FIRST_REQUEST_AT_MS = "first_request_at_ms"


def distribution(name: str):
    return Metrics.distribution(NAMESPACE, name)


#: Upper bounds (ms) of the request-latency histogram buckets; one Beam counter per bucket
#: (`latency_le_<bound>ms`, `latency_le_infms`), since Beam's distributions keep only
#: min/max/mean/count and counters add up the same way on every runner.
LATENCY_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)
LATENCY_BUCKET_PREFIX = "latency_le_"


def latency_bucket(ms: float) -> str:
    """The counter name of the histogram bucket holding a request latency of `ms`."""
    for bound in LATENCY_BUCKETS_MS:
        if ms <= bound:
            return f"{LATENCY_BUCKET_PREFIX}{bound}ms"
    return f"{LATENCY_BUCKET_PREFIX}infms"


class BundleCounts:
    """Counts summed over a bundle and added to the counters at its end: one metrics call
    per name per bundle instead of one per element (a DoFn calls `flush` in
    `finish_bundle`; a bundle that fails is retried whole, its counts with it)."""

    def __init__(self):
        self._counts = collections.Counter()

    def inc(self, name: str, n: int = 1):
        self._counts[name] += n

    def flush(self):
        for name, n in self._counts.items():
            counter(name).inc(n)
        self._counts.clear()


#: The counter name Dataflow's autoscaler reads (whatever the namespace): Beam's own GCS,
#: BigQuery and Datastore clients report their backoff under it.
THROTTLING_SECONDS = "cumulativeThrottlingSeconds"


class ThrottlingSeconds:
    """Seconds the endpoint made this process wait, reported through Beam's
    `ThrottlingSignaler` as the integer counter `cumulativeThrottlingSeconds` (namespace
    NAMESPACE): whole seconds, the fraction carried to the next report, so that many short
    waits add up (Beam's own clients drop each wait's fraction)."""

    def __init__(self):
        self._signaler = ThrottlingSignaler(NAMESPACE)
        self._lock = threading.Lock()
        self._carried = 0.0

    def add(self, seconds: float):
        """Called on the bundle's thread (Beam metrics are thread-local)."""
        if seconds <= 0:
            return
        with self._lock:
            self._carried += seconds
            whole = int(self._carried)
            self._carried -= whole
        if whole:
            self._signaler.signal_throttled(whole)
