"""How a finished job went, from its metrics and counts: the time before its first request
apart from the time predicting, and whether more of its records failed at the endpoint than
--failure_threshold allows."""
from typing import Optional

from apache_beam.metrics.metric import MetricsFilter

from core.records import Stage
from transforms import metrics


def first_request_at(result) -> Optional[float]:
    """Epoch seconds of the job's first request (None when it sent none)."""
    query = result.metrics().query(MetricsFilter().with_namespace(metrics.NAMESPACE)
                                   .with_name(metrics.FIRST_REQUEST_AT_MS))
    firsts = [(d.committed or d.attempted) for d in query["distributions"]]
    firsts = [d.min for d in firsts if d is not None and d.count]
    return min(firsts) / 1000 if firsts else None


def timings(elapsed_s: float, started_at: float, first_request: Optional[float],
            predicted: int) -> dict:
    """`listing_s` (start-up, listing and --limit's choice: all before the first request),
    `predict_s` (from the first request to the end) and images_per_s over `predict_s`."""
    listing_s = None if first_request is None else min(max(first_request - started_at, 0.0),
                                                         elapsed_s)
    predict_s = elapsed_s - (listing_s or 0.0)
    return {"elapsed_s": round(elapsed_s, 3),
            "listing_s": None if listing_s is None else round(listing_s, 3),
            "predict_s": round(predict_s, 3),
            "images_per_s": round(predicted / predict_s, 1) if predict_s > 0 else None}


ENDPOINT_STAGES = (Stage.PREDICT.value, Stage.PARSE.value)


def endpoint_failures(summary: dict, max_failed_fraction: float) -> Optional[str]:
    """Why a finished job failed, as the early stop says it: more of the records sent than
    --failure_threshold failed at the endpoint (predict or parse). None when not."""
    failed = sum(summary.get("failed_by_stage", {}).get(s, 0) for s in ENDPOINT_STAGES)
    tried = summary.get("predicted", 0) + failed
    if max_failed_fraction >= 1 or not failed or failed <= max_failed_fraction * tried:
        return None
    return (f"stopped: {failed} of {tried} records failed at the endpoint, more than "
            f"--failure_threshold={max_failed_fraction:g}")
