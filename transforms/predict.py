"""Predict: packed requests -> prediction records, with a `failed` output of dead letters.

Each worker process runs one `engine.engine.Engine`: an asyncio event loop on a background
thread with one PredictClient (aiohttp connection pool, `--max_concurrent_requests` slots, the
process's share of `--qps`). The copies of the DoFn in a process share it across bundles
through Beam's `Shared` handle (as RunInference holds its model); it closes when it is garbage:
`Shared` keeps the last engine acquired until another is acquired or the process exits.
`process()` hands a request to the loop and returns at once, so many requests are in flight
while Beam keeps feeding the DoFn; finished requests are emitted by the next `process()` call
as they complete, and `finish_bundle()` waits for the rest of its bundle.

Beam metrics (namespace `batch_predict`): counters `requests` (HTTP attempts), `instances`
(sent, over all attempts), `retries` and `retries_<cause>` (`http_429`, `http_503`, ...,
`connection`, `timeout`, `non_json`, `unauthorized`, `auth`), `splits`, `throttled_ms`
(held back by the adaptive throttler), `backoff_throttled_ms` (waits before retrying a 429 or
503), `predicted`, `failed_predict` / `failed_parse`; distributions `latency_ms` and
`first_request_at_ms` (epoch ms of each bundle's first request: its min is the job's first).
The two throttling waits are also reported in whole seconds as `cumulativeThrottlingSeconds`,
the counter Dataflow's autoscaler reads (as Beam's own GCS, BigQuery and Datastore clients
do); waits for a `--qps` turn are not throttling and count in neither. They are updated on
the bundle's thread, since Beam metrics are thread-local. The progress line is
`transforms.progress`.

A job whose endpoint is down or refuses everything stops early (`FailureThreshold`): each
process tallies the requests and records it finished, across bundles, and once its tally
crosses the threshold every bundle of the process fails with `JobStopped`, which the runner
turns into a failed job (see docs/faults.md).
"""
import functools
import os
import queue
import sys
import time
from typing import Optional

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.shared import Shared

from core.records import PredictRequest, Stage
from engine.client import Stats
from engine.engine import Engine, JobStopped, PredictSettings, STOPPED_PREFIX
from transforms import metrics
from transforms.failures import FAILED
from transforms.passthrough import with_values
from transforms.progress import PROGRESS

class _QuietStops:
    """A worker process's stderr, less the tracebacks of JobStopped: Beam's SDK harness
    prints every failed bundle's traceback there (it also logs it, which the launcher
    filters), and a DirectRunner worker's stderr is the launcher's, whose one line says it."""

    def __init__(self, stream):
        self._stream = stream
        self._dropped = False

    def write(self, text: str) -> int:
        dropped, self._dropped = self._dropped, False
        if text.startswith("Traceback") and f"{JobStopped.__name__}: {STOPPED_PREFIX}" in text:
            self._dropped = True
            return len(text)
        if dropped and text == "\n":  # print's end after the dropped traceback
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def quiet_stopped_tracebacks():
    """In a Beam SDK worker process (not the launcher), wrap stderr once in _QuietStops."""
    if "CONTROL_API_SERVICE_DESCRIPTOR" in os.environ and not isinstance(sys.stderr,
                                                                         _QuietStops):
        sys.stderr = _QuietStops(sys.stderr)


class _PredictFn(beam.DoFn):
    def __init__(self, settings: PredictSettings):
        self._settings = settings
        self._shared = Shared()  # pickled with the DoFn: its copies in a process share one
        self._engine: Optional[Engine] = None

    def setup(self):
        quiet_stopped_tracebacks()
        self._engine = self._shared.acquire(functools.partial(Engine, self._settings, PROGRESS))

    def start_bundle(self):
        self._first_request = True
        self._done = queue.Queue()
        self._pending = 0
        self._fields = {}  # key -> --passthrough_fields values, for the requests in flight

    def process(self, request: PredictRequest):
        self._raise_if_stopped()
        if request.fields:
            self._fields.update(zip(request.keys, request.fields))
        if self._first_request:  # the job's earliest is the distribution's min
            self._first_request = False
            _FIRST_REQUEST.update(int(time.time() * 1000))
        self._engine.submit(request, self._done)
        self._pending += 1
        yield from self._emit(block=False)

    def finish_bundle(self):
        self._raise_if_stopped()
        for output in self._emit(block=True):
            if isinstance(output, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(
                    output.tag, GlobalWindows.windowed_value(output.value))
            else:
                yield GlobalWindows.windowed_value(output)

    def teardown(self):
        self._engine = None  # the engine closes once no copy and no `Shared` keeps it

    def _raise_if_stopped(self):
        if self._engine.stopped:
            raise JobStopped(self._engine.stopped)

    def _emit(self, block: bool):
        """Outputs of finished requests: all of them when `block`, else those done so far."""
        while self._pending:
            try:
                result = self._done.get(block=block)
            except queue.Empty:
                return
            self._pending -= 1
            if isinstance(result, BaseException):
                raise result
            self._raise_if_stopped()
            outcomes, stats = result
            _count(outcomes, stats)
            for outcome in outcomes:
                values = self._fields.pop(outcome.record["key"], None) if self._fields else None
                if outcome.ok:
                    yield with_values(outcome.record, values)
                else:
                    yield beam.pvalue.TaggedOutput(FAILED, outcome.record)


_LATENCY = metrics.distribution("latency_ms")
_THROTTLING = metrics.ThrottlingSeconds()
_FIRST_REQUEST = metrics.distribution(metrics.FIRST_REQUEST_AT_MS)


def _count(outcomes, stats: Stats):
    """Beam metrics, updated on the bundle's thread (metrics are thread-local)."""
    metrics.counter("requests").inc(stats.requests)
    metrics.counter("instances").inc(stats.instances)
    if stats.splits:
        metrics.counter("splits").inc(stats.splits)
    if stats.throttled_s:
        metrics.counter("throttled_ms").inc(int(stats.throttled_s * 1000))
    if stats.backed_off_s:
        metrics.counter("backoff_throttled_ms").inc(int(stats.backed_off_s * 1000))
    _THROTTLING.add(stats.throttled_s + stats.backed_off_s)
    for cause, n in stats.retries.items():
        metrics.counter("retries").inc(n)
        metrics.counter(f"retries_{cause}").inc(n)
    for ms in stats.latencies_ms:
        _LATENCY.update(ms)
        metrics.counter(metrics.latency_bucket(ms)).inc()
    predicted = sum(1 for outcome in outcomes if outcome.ok)
    if predicted:
        metrics.counter("predicted").inc(predicted)
    for outcome in outcomes:
        if not outcome.ok:
            metrics.counter(Stage(outcome.record["stage"]).counter).inc()


class Predict(beam.PTransform):
    """PredictRequest -> prediction records, with their --passthrough_fields values (main),
    and dead-letter rows (`failed`)."""

    def __init__(self, settings: PredictSettings):
        super().__init__()
        self._settings = settings

    def expand(self, requests):
        return requests | "Predict" >> beam.ParDo(_PredictFn(self._settings)).with_outputs(
            FAILED, main="predictions")
