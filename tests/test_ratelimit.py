"""The qps schedule and the adaptive throttler, on injected clocks."""
import asyncio
import random

import pytest

from engine.ratelimit import RateLimiter, Throttler, worker_share


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


class OversleepingClock(Clock):
    """A clock and an asyncio sleep on it; the sleeps listed in `late` overrun by that much."""

    def __init__(self, late=()):
        super().__init__()
        self.late = list(late)

    async def sleep(self, seconds):
        self.now += seconds + (self.late.pop(0) if self.late else 0.0)
        await asyncio.sleep(0)


async def turns(limiter, clock, count):
    """The clock at each of `count` concurrent requests' turns, in turn order."""
    times = []

    async def one():
        await limiter.turn()
        times.append(clock.now)
    await asyncio.gather(*(one() for _ in range(count)))
    return times


def send_times(limiter, clock, count):
    return asyncio.run(turns(limiter, clock, count))


def window_holds(times, count, seconds):
    """No window of `seconds` holds more than `count` of `times`."""
    return all(b - a >= seconds for a, b in zip(times, times[count:]))


def test_limiter_spaces_turns_evenly():
    clock = OversleepingClock()
    times = send_times(RateLimiter(4.0, clock, clock.sleep), clock, 9)
    assert times[0] == pytest.approx(clock.now - 2 * 1.02)  # two windows of 4 turns, 1 s + headroom
    assert window_holds(times, 4, 1.0)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) >= 0.125 - 1e-9  # never faster than twice the rate


def test_a_late_wake_up_never_puts_more_than_qps_sends_in_a_second():
    late = [0.0, 0.004, 0.0, 0.03, 0.0, 0.002, 0.007] * 10  # wake-ups up to 30 ms late
    clock = OversleepingClock(late=late)
    times = send_times(RateLimiter(10.0, clock, clock.sleep), clock, 61)
    assert window_holds(times, 10, 1.0)
    mean = (len(times) - 1) / (times[-1] - times[0])
    assert mean == pytest.approx(10 / 1.01, rel=0.03)  # the late turns were caught up


def test_limiter_banks_at_most_one_window_after_idling():
    clock = OversleepingClock()
    limiter = RateLimiter(10.0, clock, clock.sleep)

    async def busy_idle_busy():
        await turns(limiter, clock, 30)
        clock.now += 60  # a minute idle
        return await turns(limiter, clock, 30)
    times = asyncio.run(busy_idle_busy())
    assert window_holds(times, 10, 1.0)
    assert [round(b - a, 6) for a, b in zip(times, times[1:5])] == [0.05] * 4


def test_limiter_zero_qps_is_no_limit():
    clock = OversleepingClock()
    times = send_times(RateLimiter(0, clock, clock.sleep), clock, 100)
    assert set(times) == {clock.now}


def test_worker_share():
    assert worker_share(30, 3) == 10
    assert worker_share(30, 0) == 30


def test_throttler_holds_back_under_sustained_429_then_recovers():
    clock = Clock()
    throttler = Throttler(window_s=10, bucket_s=1, clock=clock, rng=random.Random(7))
    for _ in range(100):  # ten seconds of nothing but 429s
        if not throttler.should_wait():
            throttler.answered(False)
        clock.now += 0.1
    assert throttler.probability() > 0.9
    assert sum(throttler.should_wait() for _ in range(100)) > 70

    asks = 0
    for _ in range(3000):  # the endpoint is healthy again: whatever is sent is accepted
        asks += 1
        if not throttler.should_wait():
            throttler.answered(True)
        clock.now += 0.1
        if throttler.probability() == 0:
            break
    assert throttler.probability() == 0
    assert asks < 1000  # recovered within ten windows (seeds 0-39: 15 to 80 s)
    assert not any(throttler.should_wait() or throttler.answered(True) for _ in range(50))


def test_throttler_never_holds_back_while_requests_are_accepted():
    clock = Clock()
    throttler = Throttler(clock=clock)
    waits = 0
    for i in range(500):
        waits += throttler.should_wait()
        throttler.answered(i % 10 != 9)  # 10 % of answers are 429
        clock.now += 0.05
    assert waits == 0


def test_requests_still_in_flight_do_not_look_refused():
    clock = Clock()
    throttler = Throttler(clock=clock)
    asks = [throttler.should_wait() for _ in range(64)]  # a slow endpoint: no answer yet
    assert not any(asks) and throttler.probability() == 0
