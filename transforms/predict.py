"""Predict: packed requests -> prediction records, with a `failed` output of dead letters.

Each worker process runs one `Engine`: an asyncio event loop on a background thread with
one PredictClient (connection pool, `--max_concurrent_requests` slots, the process's share
of `--qps`). DoFn instances of that process share it. `process()` hands a request to the
loop and returns at once, so many requests are in flight while Beam keeps feeding the DoFn;
finished requests are emitted as they complete, and `finish_bundle()` waits for the rest.
"""
import asyncio
import dataclasses
import logging
import queue
import threading
import time
from typing import Dict, Optional

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows

from transforms import metrics
from transforms.client import ClientSettings, Outcome, PredictClient, Stats
from transforms.ratelimit import RateLimiter
from transforms.records import PredictRequest

FAILED = "failed"
PROGRESS_EVERY_S = 10.0
QUEUED_PER_SLOT = 2  # requests handed to the loop per concurrency slot, bounding memory

_LOG = logging.getLogger("batch_predict")


@dataclasses.dataclass(frozen=True)
class PredictSettings:
    client: ClientSettings
    qps_share: float = 0.0  # this worker process's requests per second; 0 = no limit


class Progress:
    """Process-wide totals and a progress line every few seconds."""

    def __init__(self, every_s: float = PROGRESS_EVERY_S):
        self._every_s = every_s
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._last = self._started
        self.predicted = self.failed = self.requests = self.retries = 0

    def add(self, outcomes, stats: Stats):
        with self._lock:
            for outcome in outcomes:
                if outcome.ok:
                    self.predicted += 1
                else:
                    self.failed += 1
            self.requests += stats.requests
            self.retries += sum(stats.retries.values())
            now = time.monotonic()
            if now - self._last >= self._every_s:
                self._last = now
                done = self.predicted + self.failed
                _LOG.info("progress: %d done (%d predicted, %d failed), %.1f img/s, "
                          "%d requests, %d retries", done, self.predicted, self.failed,
                          done / (now - self._started), self.requests, self.retries)


class Engine:
    """An event loop thread with one PredictClient, shared by a process's DoFn instances."""

    def __init__(self, settings: PredictSettings):
        self._settings = settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                         name="batch-predict-loop")
        self._thread.start()
        limiter = RateLimiter(settings.qps_share)
        self._client = PredictClient(settings.client, limiter)
        self._run(self._client.open())
        self._queued = threading.BoundedSemaphore(
            settings.client.max_concurrent_requests * QUEUED_PER_SLOT)
        self.progress = Progress()

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def submit(self, request: PredictRequest, done: "queue.Queue"):
        """Start a request; blocks while too many are queued. Its result lands in `done`."""
        self._queued.acquire()
        future = asyncio.run_coroutine_threadsafe(
            self._client.predict(request.keys, request.instances), self._loop)
        future.add_done_callback(lambda f: self._finished(f, request, done))

    def _finished(self, future, request, done):
        self._queued.release()
        try:
            outcomes, stats = future.result()
        except BaseException as e:  # a bug, not an endpoint failure: fail the bundle loudly
            done.put(e)
            return
        self.progress.add(outcomes, stats)
        done.put((outcomes, stats))

    def close(self):
        try:
            self._run(self._client.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)


class _Engines:
    """One Engine per settings per process, reference counted across DoFn instances."""

    def __init__(self):
        self._lock = threading.Lock()
        self._engines: Dict[PredictSettings, list] = {}

    def acquire(self, settings: PredictSettings) -> Engine:
        with self._lock:
            entry = self._engines.get(settings)
            if entry is None:
                entry = self._engines[settings] = [Engine(settings), 0]
            entry[1] += 1
            return entry[0]

    def release(self, settings: PredictSettings):
        with self._lock:
            entry = self._engines.get(settings)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] <= 0:
                del self._engines[settings]
                entry[0].close()


ENGINES = _Engines()


class _PredictFn(beam.DoFn):
    def __init__(self, settings: PredictSettings):
        self._settings = settings
        self._engine: Optional[Engine] = None

    def setup(self):
        self._engine = ENGINES.acquire(self._settings)

    def start_bundle(self):
        self._done = queue.Queue()
        self._pending = 0

    def process(self, request: PredictRequest):
        self._engine.submit(request, self._done)
        self._pending += 1
        yield from self._emit(block=False)

    def finish_bundle(self):
        for output in self._emit(block=True):
            if isinstance(output, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(
                    output.tag, GlobalWindows.windowed_value(output.value))
            else:
                yield GlobalWindows.windowed_value(output)

    def teardown(self):
        if self._engine is not None:
            ENGINES.release(self._settings)
            self._engine = None

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
            outcomes, stats = result
            _count(outcomes, stats)
            for outcome in outcomes:
                if outcome.ok:
                    yield outcome.record
                else:
                    yield beam.pvalue.TaggedOutput(FAILED, outcome.record)


def _count(outcomes, stats: Stats):
    """Beam metrics, updated on the bundle's thread (metrics are thread-local)."""
    metrics.counter("requests").inc(stats.requests)
    metrics.counter("splits").inc(stats.splits)
    for cause, n in stats.retries.items():
        metrics.counter("retries").inc(n)
        metrics.counter(f"retries_{cause}").inc(n)
    latency = metrics.distribution("latency_ms")
    for ms in stats.latencies_ms:
        latency.update(ms)
    for outcome in outcomes:
        if outcome.ok:
            metrics.counter("predicted").inc()
        else:
            metrics.counter(f"failed_{outcome.record['stage']}").inc()


class Predict(beam.PTransform):
    """PredictRequest -> prediction records (main) and dead-letter rows (`failed`)."""

    def __init__(self, settings: PredictSettings):
        super().__init__()
        self._settings = settings

    def expand(self, requests):
        return requests | "Predict" >> beam.ParDo(_PredictFn(self._settings)).with_outputs(
            FAILED, main="predictions")
