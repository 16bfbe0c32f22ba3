"""transforms.metrics: counts summed per bundle reach the job's counters in full."""
import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter

from tests.helpers import LOCAL_RUNNER
from transforms import metrics


class _CountFn(beam.DoFn):
    def start_bundle(self):
        self._counts = metrics.BundleCounts()

    def process(self, n):
        self._counts.inc("seen")
        self._counts.inc("odd" if n % 2 else "even", 2)
        yield n

    def finish_bundle(self):
        self._counts.flush()


def test_bundle_counts_add_up_over_every_bundle():
    p = beam.Pipeline(runner=LOCAL_RUNNER)
    _ = (p | beam.Create(range(1001)) | beam.Reshuffle() | beam.ParDo(_CountFn()))
    result = p.run()
    result.wait_until_finish()
    query = result.metrics().query(MetricsFilter().with_namespace(metrics.NAMESPACE))
    totals = {c.key.metric.name: c.committed for c in query["counters"]}
    assert totals == {"seen": 1001, "even": 2 * 501, "odd": 2 * 500}


def test_counters_are_cached():
    assert metrics.counter("seen") is metrics.counter("seen")
