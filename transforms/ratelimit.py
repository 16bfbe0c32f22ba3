"""Client-side rate limiting: a steady request schedule for this worker's share of `--qps`,
plus SRE-style adaptive throttling when the endpoint answers 429 anyway.
"""
import threading
import time
from typing import Callable

from apache_beam.io.components.adaptive_throttler import AdaptiveThrottler

THROTTLE_WINDOW_MS = 60_000
THROTTLE_BUCKET_MS = 1_000
OVERLOAD_RATIO = 2.0


def worker_share(qps: float, workers: int) -> float:
    """This worker process's part of the job-wide rate."""
    return qps / max(1, workers)


class RateLimiter:
    """Spaces requests `1/qps` apart (no bursts), shared by every thread of a process.

    `reserve()` books the next free slot and returns how long to wait for it, so callers on
    any thread or event loop can sleep their own way. qps <= 0 means no limit.
    """

    def __init__(self, qps: float, clock: Callable[[], float] = time.monotonic):
        self._interval = 1.0 / qps if qps > 0 else 0.0
        self._clock = clock
        self._next = 0.0
        self._lock = threading.Lock()

    def reserve(self) -> float:
        if not self._interval:
            return 0.0
        with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + self._interval
            return slot - now


class Throttler:
    """Beam's AdaptiveThrottler behind a small interface: should this attempt wait, and how
    did the last one go (a 429 counts as throttled, anything else as accepted)."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self._throttler = AdaptiveThrottler(THROTTLE_WINDOW_MS, THROTTLE_BUCKET_MS, OVERLOAD_RATIO)
        self._clock = clock
        self._lock = threading.Lock()

    def should_wait(self) -> bool:
        with self._lock:
            return self._throttler.throttle_request(self._clock() * 1000)

    def accepted(self):
        with self._lock:
            self._throttler.successful_request(self._clock() * 1000)
