"""Client-side rate limiting: this worker's share of `--qps` as a minimum spacing between
sends, plus SRE-style adaptive throttling when the endpoint answers 429 anyway.

How the share is derived is `pipeline.config.worker_processes` (and docs/dataflow.md, "How
`--qps` is shared across workers"; docs/faults.md for the pacing): every worker process holds
`qps / processes` and paces its own sends, so the whole job never sends more than `--qps` in
any second however the runner schedules bundles.
"""
import asyncio
import collections
import math
import random
import threading
import time
from typing import Awaitable, Callable, Deque, Optional

from apache_beam.io.components.util import MovingSum

# Client-side throttling (https://sre.google/sre-book/handling-overload/): over the last
# THROTTLE_WINDOW_S, a request is held back with probability
# max(0, (requests - K * accepted) / (requests + 1)), K = OVERLOAD_RATIO: nothing is held back
# while at least half the requests are accepted. A held-back request waits about
# THROTTLE_DELAY_S and asks again (each ask counts as a request, as in Beam's
# ReactiveThrottler), for at most half a window per attempt: in a total outage each slot
# sends about one request per 5 s instead of one per round trip, and those probes are what
# notice the recovery. Once 429s stop, every accepted request lowers the probability, which
# falls back to 0 over a few windows (as in the SRE scheme: the further it rose, the longer).
THROTTLE_WINDOW_S = 10.0
THROTTLE_BUCKET_S = 1.0
OVERLOAD_RATIO = 2.0
THROTTLE_DELAY_S = 1.0


def worker_share(qps: float, workers: int) -> float:
    """This worker process's part of the job-wide rate."""
    return qps / max(1, workers)


# Headroom on every window of sends, for the network, the event loop and the endpoint's clock:
# the quota counts arrivals, which jitter by tens of milliseconds around the sends on a busy host.
WINDOW_HEADROOM = 0.02
MIN_GAP = 0.5  # two sends are never closer than this many intervals


def window_size(qps: float) -> int:
    """Sends per window: the rate rounded up to whole sends per second (at least 1). With a
    fractional rate a one-second window may hold one send more than `qps` (counts are whole)."""
    return max(1, math.ceil(qps - 1e-9))


class RateLimiter:
    """At most `qps` sends in any one-second window, measured from actual send times.

    `turn()` is the one pacing point, awaited immediately before a request is written. Turns are
    handed out one at a time, in arrival order, and a turn begins only when
    - the last `n` turns (n = qps rounded up, see `window_size`) began at least
      `n / qps x (1 + WINDOW_HEADROOM)` seconds ago: so no one-second window (a quota's
      calendar second, say) ever holds more than `qps` sends of this process, and
    - the previous turn began at least `MIN_GAP / qps` ago: never faster than twice the rate.
    A late wake-up delays that turn only; the window lets the next ones catch up, so the mean
    rate stays at `qps / (1 + WINDOW_HEADROOM)` however late the event loop wakes. Unused
    time is never banked beyond one window. qps <= 0 means no limit. Lives on one event loop.
    """

    def __init__(self, qps: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable] = asyncio.sleep):
        self._size = window_size(qps) if qps > 0 else 0
        self._window = self._size / qps * (1 + WINDOW_HEADROOM) if qps > 0 else 0.0
        self._gap = MIN_GAP / qps if qps > 0 else 0.0
        self._clock = clock
        self._sleep = sleep
        self._starts: Deque[float] = collections.deque(maxlen=max(1, self._size))
        self._lock: Optional[asyncio.Lock] = None

    def _earliest(self) -> float:
        """When the next turn may begin."""
        if not self._starts:
            return float("-inf")
        earliest = self._starts[-1] + self._gap
        if len(self._starts) == self._size:
            earliest = max(earliest, self._starts[0] + self._window)
        return earliest

    async def turn(self):
        """Wait until this request may be sent; the caller sends at once."""
        if not self._size:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            while True:
                wait = self._earliest() - self._clock()
                if wait <= 0:
                    break
                await self._sleep(wait)
            self._starts.append(self._clock())


class Throttler:
    """Client-side throttling in the SRE style, on Beam's MovingSum windows.

    The formula is Beam's AdaptiveThrottler's, but a request is counted when its answer comes
    (accepted: any HTTP answer but 429), not when it is sent: Beam's counts in-flight requests
    as not accepted, so with 500 ms latency the first half second of a job sees 32 requests
    and no acceptance and holds back 97 % of the next ones. Requests held back locally are
    counted at once, as the SRE book says.
    """

    def __init__(self, window_s: float = THROTTLE_WINDOW_S,
                 bucket_s: float = THROTTLE_BUCKET_S,
                 overload_ratio: float = OVERLOAD_RATIO,
                 clock: Callable[[], float] = time.time,
                 rng: Optional[random.Random] = None):
        window_ms, bucket_ms = int(window_s * 1000), int(bucket_s * 1000)
        self._requests = MovingSum(window_ms, bucket_ms)
        self._accepted = MovingSum(window_ms, bucket_ms)
        self._ratio = float(overload_ratio)
        self._clock = clock
        self._rng = rng or random.Random()
        self._lock = threading.Lock()

    def _probability(self, now_ms: float) -> float:
        if not self._requests.has_data(now_ms):
            return 0.0
        requests = self._requests.sum(now_ms)
        return max(0.0, (requests - self._ratio * self._accepted.sum(now_ms)) / (requests + 1))

    def should_wait(self) -> bool:
        """Ask before each attempt; True: hold it back (counted as a request rejected here)."""
        with self._lock:
            now_ms = self._clock() * 1000
            if self._rng.random() < self._probability(now_ms):
                self._requests.add(now_ms, 1)
                return True
            return False

    def answered(self, accepted: bool):
        """Record an attempt's outcome: accepted, or refused (429) / no answer at all."""
        with self._lock:
            now_ms = self._clock() * 1000
            self._requests.add(now_ms, 1)
            if accepted:
                self._accepted.add(now_ms, 1)

    def probability(self) -> float:
        """The current probability of holding a request back."""
        with self._lock:
            return self._probability(self._clock() * 1000)
