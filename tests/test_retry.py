"""The retry policy: which statuses are retried, the backoff and its jitter, Retry-After."""
import random

import pytest

from engine.retry import MAX_RETRY_AFTER_S, parse_retry_after, RetryPolicy


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
