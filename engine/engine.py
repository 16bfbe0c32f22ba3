"""The engine of one worker process: an asyncio event loop on a background thread with one
PredictClient (aiohttp connection pool, `--max_concurrent_requests` slots, the process's share
of `--qps`). Bundle threads `submit` requests and get their outcomes on a queue; nothing here
knows Beam (`transforms.predict` holds it the way RunInference holds a model).

A job whose endpoint is down or refuses everything stops early (`FailureThreshold`): the
engine tallies the requests and records it finished, across bundles, and once its tally
crosses the threshold `stopped` says why (see docs/faults.md).
"""
import asyncio
import dataclasses
import functools
import queue
import threading
import weakref
from typing import Iterable, Optional

from core.records import PredictRequest
from engine.client import ClientSettings, Outcome, PredictClient
from engine.ratelimit import RateLimiter

# Requests handed to the loop but not finished, per concurrency slot and in bytes: enough
# that the bundle thread keeps encoding while the loop waits on the endpoint, bounded so
# that memory does not grow with the job.
QUEUED_PER_SLOT = 4
MAX_QUEUED_BYTES = 64 * 1024 * 1024
CLOSE_TIMEOUT_S = 10.0

# Every message of a JobStopped starts so, which lets the launcher find it however the runner
# wrapped the worker's exception.
STOPPED_PREFIX = "stopped early: "
FIRST_REQUESTS = 10  # the job stops when each of a process's first FIRST_REQUESTS failed
# The endpoint judged the content: a refusal of bad images, not a sign the endpoint is down.
REFUSAL_STATUSES = frozenset((400, 413))


class JobStopped(RuntimeError):
    """The failure threshold was crossed: the job must stop."""


@dataclasses.dataclass(frozen=True)
class FailureThreshold:
    """When to stop: more than `max_failed_fraction` of the records tried failed, once at
    least `min_records` were tried, or every one of the first `first_requests` requests failed
    (not counting a request the endpoint refused with a 400/413: that is bad content).
    A fraction of 1 never stops (Beam's `with_exception_handling(threshold=1)`)."""
    max_failed_fraction: float = 0.5
    min_records: int = 100
    first_requests: int = FIRST_REQUESTS

    def reason(self, tally: "Tally") -> Optional[str]:
        """Why the job must stop now, or None."""
        if self.max_failed_fraction >= 1:
            return None
        if tally.requests == self.first_requests and tally.failed_requests == tally.requests:
            return (f"{STOPPED_PREFIX}every one of the first {tally.requests} requests failed "
                    f"(the endpoint looks down or misconfigured); last error: "
                    f"{tally.last_error}")
        tried = tally.predicted + tally.failed
        if tried >= self.min_records and tally.failed > self.max_failed_fraction * tried:
            return (f"{STOPPED_PREFIX}{tally.failed} of {tried} records failed at predict, "
                    f"more than --failure_threshold={self.max_failed_fraction:g}; last error: "
                    f"{tally.last_error}")
        return None


@dataclasses.dataclass
class Tally:
    """One process's finished requests and records, across bundles."""
    requests: int = 0
    failed_requests: int = 0  # requests all of whose records failed, not by a 400/413 refusal
    predicted: int = 0
    failed: int = 0
    last_error: str = ""

    def add(self, outcomes: Iterable[Outcome]):
        failed = [o.record for o in outcomes if not o.ok]
        predicted = sum(1 for o in outcomes if o.ok)
        self.requests += 1
        self.predicted += predicted
        self.failed += len(failed)
        if failed:
            self.last_error = failed[-1]["error"]
            if not predicted and failed[-1]["http_status"] not in REFUSAL_STATUSES:
                self.failed_requests += 1


@dataclasses.dataclass(frozen=True)
class PredictSettings:
    client: ClientSettings
    qps_share: float = 0.0  # this worker process's requests per second; 0 = no limit
    failure_threshold: FailureThreshold = FailureThreshold()


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
    """An event loop thread with one PredictClient, shared by a process's DoFn copies.

    Threads: `submit` runs on bundle threads; everything else on the loop thread. The inbox
    and `_active`, `_wake_pending` are shared between them under `_lock`. `stopped` and the
    client's `attempting` are written on the loop thread only and read elsewhere as they
    are at that moment (see `submit`).
    """

    def __init__(self, settings: PredictSettings, progress=None):
        self._settings = settings
        self._client = PredictClient(settings.client, RateLimiter(settings.qps_share))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                         name="batch-predict-loop")
        self._thread.start()
        # Closes the pool and stops the loop once the engine is garbage (or at exit).
        weakref.finalize(self, _close, self._loop, self._thread, self._client)
        asyncio.run_coroutine_threadsafe(self._client.open(), self._loop).result()
        self._slots = settings.client.max_concurrent_requests
        self._queued = _Budget(self._slots * QUEUED_PER_SLOT, MAX_QUEUED_BYTES)
        self._lock = threading.Lock()
        self._inbox = []  # (request, size, done) handed over, not yet started on the loop
        self._active = 0  # tasks started on the loop and not finished
        self._tasks = set()  # the same tasks, to cancel when the job stops (loop thread only)
        self._wake_pending = False
        self._tally = Tally()  # loop thread only
        self.stopped: Optional[str] = None  # set once, on the loop thread: why the job stops
        self.progress = progress  # told of every finished request: `add(outcomes, stats)`

    def submit(self, request: PredictRequest, done: queue.Queue):
        """Start a request; blocks while too many are queued. Its result lands in `done`.

        The loop is woken only when it may have a free slot: while every slot is taken, new
        requests wait in the inbox and the next request to finish takes them in, which
        saves a cross-thread wake-up (and a GIL hand-off) per request. "Every slot taken"
        is a hint read from the loop's own counter, unsynchronised (it can change right
        after any read anyway). The request is sure to start because of `_active`, read
        under the lock: while a task is active, its end drains the inbox. So an outdated
        "busy" only delays the start to the next finish, an outdated "free" costs a wake-up.
        """
        if self.stopped:
            raise JobStopped(self.stopped)
        size = sum(len(i) for i in request.instances)
        self._queued.take(size)
        slots_busy = self._client.attempting >= self._slots
        with self._lock:
            self._inbox.append((request, size, done))
            wake = not self._wake_pending and (self._active == 0 or not slots_busy)
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
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._finished, size=size, done=done))
            if self.stopped:
                task.cancel()

    def _finished(self, task, size, done):
        with self._lock:
            self._active -= 1
        self._tasks.discard(task)
        self._queued.give(size)
        try:
            outcomes, stats = task.result()
        except BaseException as e:  # a bug, not an endpoint failure: fail the bundle loudly
            done.put(JobStopped(self.stopped) if self.stopped else e)
        else:
            if self.progress is not None:
                self.progress.add(outcomes, stats)
            self._check_threshold(outcomes)
            done.put((outcomes, stats))
        self._drain()

    def _check_threshold(self, outcomes):
        """Tally a finished request; past the failure threshold, stop everything in flight."""
        if self.stopped:
            return
        self._tally.add(outcomes)
        self.stopped = self._settings.failure_threshold.reason(self._tally)
        if self.stopped:
            for task in list(self._tasks):
                task.cancel()


def _close(loop: asyncio.AbstractEventLoop, thread: threading.Thread, client: PredictClient):
    """Close the client's pool on the loop, then stop the loop; wait for that unless this
    is the loop's own thread (an engine can become garbage there)."""
    async def close_and_stop():
        try:
            await client.close()
        finally:
            loop.stop()

    if not thread.is_alive():
        return
    asyncio.run_coroutine_threadsafe(close_and_stop(), loop)
    if threading.current_thread() is not thread:
        thread.join(timeout=CLOSE_TIMEOUT_S)
