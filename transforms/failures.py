"""Dead letters and skips as the composites make them: each is counted under its own
`Stage` or `SkipReason` at the moment it is made, so a record's stage and its counter
cannot disagree, and the summary (`core.records.accounting`) reads the same names."""
from typing import Optional

import apache_beam as beam

from core.records import dead_letter, SkipReason, Stage
from transforms import metrics

FAILED = "failed"  # the tag of every composite's dead-letter output


def _inc(name: str, counts: Optional[metrics.BundleCounts]):
    if counts is None:
        metrics.counter(name).inc()
    else:
        counts.inc(name)


def failure(key: str, stage: Stage, error: str,
            counts: Optional[metrics.BundleCounts] = None) -> beam.pvalue.TaggedOutput:
    """The dead letter of `key` on the FAILED output, counted (in `counts`, a bundle's
    tally, when given)."""
    _inc(stage.counter, counts)
    return beam.pvalue.TaggedOutput(FAILED, dead_letter(key, stage, error))


def skip(reason: SkipReason, counts: Optional[metrics.BundleCounts] = None):
    """Count one input skipped for `reason`."""
    _inc(reason.counter, counts)
