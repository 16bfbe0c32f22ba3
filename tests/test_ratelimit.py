"""The qps schedule, the adaptive throttler and the retry policy, on injected clocks."""
import asyncio
import random

import pytest

from transforms.ratelimit import RateLimiter, Throttler, worker_share
from transforms.retry import MAX_RETRY_AFTER_S, RetryPolicy, parse_retry_after


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


def send_times(limiter, clock, count):
    """The clock at each of `count` concurrent requests' turns, in turn order."""
    async def one(times):
        await limiter.turn()
        times.append(clock.now)

    async def all_of():
        times = []
        await asyncio.gather(*(one(times) for _ in range(count)))
        return times
    return asyncio.run(all_of())


def test_limiter_spaces_turns_evenly():
    clock = OversleepingClock()
    times = send_times(RateLimiter(4.0, clock, clock.sleep), clock, 5)
    assert [t - times[0] for t in times] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


def test_limiter_spaces_from_the_actual_previous_send_after_a_late_wake_up():
    clock = OversleepingClock(late=[0.0, 0.04, 0.0, 0.0])  # the second wait overruns
    times = send_times(RateLimiter(10.0, clock, clock.sleep), clock, 5)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert gaps == pytest.approx([0.1, 0.14, 0.1, 0.1])
    assert min(gaps) >= 0.1 - 1e-9  # never two sends closer than 1/qps


def test_limiter_banks_no_burst_after_idling():
    clock = OversleepingClock()
    limiter = RateLimiter(10.0, clock, clock.sleep)
    send_times(limiter, clock, 1)
    clock.now += 60  # a minute idle
    times = send_times(limiter, clock, 3)
    assert [t - times[0] for t in times] == pytest.approx([0.0, 0.1, 0.2])


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


@pytest.mark.parametrize("status,retried", [
    (429, True), (500, True), (502, True), (503, True), (504, True),
    (400, False), (401, False), (403, False), (404, False), (413, False), (200, False)])
def test_retryable_statuses(status, retried):
    assert RetryPolicy().is_retryable(status) is retried


def test_backoff_is_capped_exponential_with_full_jitter():
    policy = RetryPolicy(max_retries=10, base_delay_s=0.5, max_delay_s=4.0)
    rng = random.Random(1)
    for retry in range(10):
        cap = min(4.0, 0.5 * 2 ** retry)
        delays = [policy.delay(retry, None, rng) for _ in range(200)]
        assert all(0 <= d <= cap for d in delays)
        assert max(delays) > cap * 0.8 and min(delays) < cap * 0.2  # full jitter


def test_backoff_honours_retry_after():
    policy = RetryPolicy(base_delay_s=0.01, max_delay_s=0.02)
    rng = random.Random(2)
    assert all(policy.delay(0, 3.0, rng) == 3.0 for _ in range(20))
    assert policy.delay(0, 10_000, rng) == MAX_RETRY_AFTER_S
    assert policy.delay(0, 0.0, rng) <= 0.02


@pytest.mark.parametrize("header,seconds", [
    ("1", 1.0), ("2.5", 2.5), (" 0 ", 0.0), ("-3", 0.0), (None, None), ("", None),
    ("Wed, 21 Oct 2015 07:28:00 GMT", None)])
def test_parse_retry_after(header, seconds):
    assert parse_retry_after(header) == seconds
