"""Predict: packed requests -> prediction records, with a `failed` output of dead letters.

Each worker process runs one `Engine`: an asyncio event loop on a background thread with
one PredictClient (aiohttp connection pool, `--max_concurrent_requests` slots, the process's
share of `--qps`). Every DoFn instance of the process with equal settings (compared by value,
so unpickled copies match) shares it, across bundles, until the last one is torn down.
`process()` hands a request to the loop and returns at once, so many requests are in flight
while Beam keeps feeding the DoFn; finished requests are emitted by the next `process()` call
as they complete, and `finish_bundle()` waits for the rest of its bundle.

Beam metrics (namespace `batch_predict`): counters `requests` (HTTP attempts), `instances`
(sent, over all attempts), `retries` and `retries_<cause>` (`http_429`, `http_503`, ...,
`connection`, `timeout`, `non_json`, `unauthorized`, `auth`), `splits`, `throttled_ms`,
`predicted`, `failed_predict` / `failed_parse`; distribution `latency_ms`. They are updated on
the bundle's thread, since Beam metrics are thread-local. The progress line is
`transforms.progress`.
"""
import asyncio
import dataclasses
import functools
import queue
import threading
from typing import Dict, Optional

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows

from transforms import metrics
from transforms.client import ClientSettings, Outcome, PredictClient, Stats
from transforms.progress import PROGRESS
from transforms.ratelimit import RateLimiter
from transforms.records import PredictRequest

FAILED = "failed"
# Requests handed to the loop but not finished, per concurrency slot and in bytes: enough
# that the bundle thread keeps encoding while the loop waits on the endpoint, bounded so
# that memory does not grow with the job.
QUEUED_PER_SLOT = 4
MAX_QUEUED_BYTES = 64 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class PredictSettings:
    client: ClientSettings
    qps_share: float = 0.0  # this worker process's requests per second; 0 = no limit


class _Budget:
    """A count and byte budget for queued requests; `take` blocks while it is spent (one
    request is always let through, however large)."""

    def __init__(self, max_count: int, max_bytes: int):
        self._max_count, self._max_bytes = max_count, max_bytes
        self._count = self._bytes = 0
        self._changed = threading.Condition()

    def take(self, size: int):
        with self._changed:
            while self._count and (self._count >= self._max_count
                                   or self._bytes + size > self._max_bytes):
                self._changed.wait()
            self._count += 1
            self._bytes += size

    def give(self, size: int):
        with self._changed:
            self._count -= 1
            self._bytes -= size
            self._changed.notify_all()


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
        self._slots = settings.client.max_concurrent_requests
        self._queued = _Budget(self._slots * QUEUED_PER_SLOT, MAX_QUEUED_BYTES)
        self._lock = threading.Lock()
        self._inbox = []  # (request, size, done) handed over, not yet started on the loop
        self._active = 0  # tasks started on the loop and not finished
        self._wake_pending = False
        self.progress = PROGRESS

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def submit(self, request: PredictRequest, done: "queue.Queue"):
        """Start a request; blocks while too many are queued. Its result lands in `done`.

        The loop is woken only when it may have a free slot: while every slot is taken, new
        requests wait in the inbox and the next request to finish takes them in, which
        saves a cross-thread wake-up (and a GIL hand-off) per request.
        """
        size = sum(len(i) for i in request.instances)
        self._queued.take(size)
        with self._lock:
            self._inbox.append((request, size, done))
            # Skipping the wake is safe only while a task is active: its end drains the inbox.
            wake = not self._wake_pending and (
                self._active == 0 or self._client.attempting < self._slots)
            self._wake_pending = self._wake_pending or wake
        if wake:
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self):
        """On the loop: start a task for every request in the inbox."""
        with self._lock:
            items, self._inbox = self._inbox, []
            self._wake_pending = False
            self._active += len(items)
        for request, size, done in items:
            task = self._loop.create_task(self._client.predict(request.keys, request.instances))
            task.add_done_callback(functools.partial(self._finished, size=size, done=done))

    def _finished(self, task, size, done):
        with self._lock:
            self._active -= 1
        self._queued.give(size)
        try:
            outcomes, stats = task.result()
        except BaseException as e:  # a bug, not an endpoint failure: fail the bundle loudly
            done.put(e)
        else:
            self.progress.add(outcomes, stats)
            done.put((outcomes, stats))
        self._drain()

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


@functools.lru_cache(maxsize=None)
def _counter(name: str):
    """A cached Beam counter (it finds the current bundle's container at each inc)."""
    return metrics.counter(name)


_LATENCY = metrics.distribution("latency_ms")


def _count(outcomes, stats: Stats):
    """Beam metrics, updated on the bundle's thread (metrics are thread-local)."""
    _counter("requests").inc(stats.requests)
    _counter("instances").inc(stats.instances)
    if stats.splits:
        _counter("splits").inc(stats.splits)
    if stats.throttled_s:
        _counter("throttled_ms").inc(int(stats.throttled_s * 1000))
    for cause, n in stats.retries.items():
        _counter("retries").inc(n)
        _counter(f"retries_{cause}").inc(n)
    for ms in stats.latencies_ms:
        _LATENCY.update(ms)
        _counter(metrics.latency_bucket(ms)).inc()
    predicted = sum(1 for outcome in outcomes if outcome.ok)
    if predicted:
        _counter("predicted").inc(predicted)
    for outcome in outcomes:
        if not outcome.ok:
            _counter(f"failed_{outcome.record['stage']}").inc()


class Predict(beam.PTransform):
    """PredictRequest -> prediction records (main) and dead-letter rows (`failed`)."""

    def __init__(self, settings: PredictSettings):
        super().__init__()
        self._settings = settings

    def expand(self, requests):
        return requests | "Predict" >> beam.ParDo(_PredictFn(self._settings)).with_outputs(
            FAILED, main="predictions")
