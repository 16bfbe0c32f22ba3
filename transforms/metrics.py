"""Beam metrics of the pipeline, all under one namespace so the launcher can total them."""
from apache_beam.metrics import Metrics

NAMESPACE = "batch_predict"


def counter(name: str):
    return Metrics.counter(NAMESPACE, name)


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
