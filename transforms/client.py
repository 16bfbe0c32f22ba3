"""The async prediction client: sends packed requests with bounded concurrency, rate
limiting and retries, and isolates bad instances by splitting the requests they spoil.

It knows nothing of Beam; `transforms.predict` runs it on a worker's event loop. Every
request resolves to one `Outcome` per key: a prediction record or a dead-letter row.
"""
import asyncio
import collections
import dataclasses
import json
import random
import time
from typing import Counter, List, NamedTuple, Optional, Sequence, Tuple

import aiohttp

from transforms.auth import TokenSource
from transforms.protocols import Protocol, ResponseError, error_message, named_instance
from transforms.ratelimit import RateLimiter, Throttler
from transforms.records import dead_letter, prediction_record, utc_now
from transforms.retry import RetryPolicy, parse_retry_after

SPLIT_STATUSES = frozenset((400, 413))  # a request-level refusal one instance may cause
THROTTLED_WAIT_S = (0.05, 0.5)
MAX_THROTTLED_WAITS = 200


class Outcome(NamedTuple):
    ok: bool
    record: dict  # a prediction record when ok, else a dead-letter row


@dataclasses.dataclass
class Stats:
    """What one `predict()` call did, for the caller to turn into metrics."""
    requests: int = 0
    retries: Counter = dataclasses.field(default_factory=collections.Counter)
    splits: int = 0
    latencies_ms: List[int] = dataclasses.field(default_factory=list)

    def merge(self, other: "Stats"):
        self.requests += other.requests
        self.retries.update(other.retries)
        self.splits += other.splits
        self.latencies_ms.extend(other.latencies_ms)


class Reply(NamedTuple):
    """The last answer to one request after its retries."""
    status: Optional[int]  # None when no HTTP answer came at all
    body: object  # parsed JSON, or None
    error: Optional[str]  # why the request did not succeed, when it did not
    attempts: int


@dataclasses.dataclass(frozen=True)
class ClientSettings:
    endpoint: str
    protocol: Protocol
    max_concurrent_requests: int = 16
    request_timeout_s: float = 60.0
    retry: RetryPolicy = RetryPolicy()
    auth: str = "none"


class PredictClient:
    """One per worker process and event loop: a connection pool, a limiter and a throttler."""

    def __init__(self, settings: ClientSettings, limiter: RateLimiter,
                 throttler: Optional[Throttler] = None, rng: Optional[random.Random] = None):
        self._settings = settings
        self._protocol = settings.protocol
        self._limiter = limiter
        self._throttler = throttler or Throttler()
        self._rng = rng or random.Random()
        self._tokens = TokenSource(settings.auth)
        self._slots: Optional[asyncio.Semaphore] = None
        self._session: Optional[aiohttp.ClientSession] = None

    async def open(self):
        self._slots = asyncio.Semaphore(self._settings.max_concurrent_requests)
        connector = aiohttp.TCPConnector(limit=self._settings.max_concurrent_requests,
                                         ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._settings.request_timeout_s),
            headers={"Content-Type": "application/json"})

    async def close(self):
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def predict(self, keys: Sequence[str], instances: Sequence[bytes],
                      prior_attempts: int = 0) -> Tuple[List[Outcome], Stats]:
        """One Outcome per key, splitting the request where one instance spoils it."""
        stats = Stats()
        reply = await self._send(instances, stats)
        attempts = prior_attempts + reply.attempts
        failure, stage = reply.error, "predict"
        if failure is None:
            try:
                labels = self._protocol.parse(reply.body, len(keys))
            except ResponseError as e:
                failure, stage = str(e), ("predict" if error_message(reply.body) else "parse")
            else:
                model = self._protocol.model_name(reply.body, self._settings.endpoint)
                now = utc_now()
                return [Outcome(True, prediction_record(k, l, model, now))
                        for k, l in zip(keys, labels)], stats
        if len(keys) > 1 and self._splittable(reply):
            outcomes = await self._isolate(keys, instances, failure, reply, attempts, stats)
            return outcomes, stats
        return [Outcome(False, dead_letter(k, stage, failure, reply.status, attempts))
                for k in keys], stats

    def _splittable(self, reply: Reply) -> bool:
        """Could one bad instance be to blame? A 400/413, or a 200 that is no good answer."""
        return reply.status in SPLIT_STATUSES or reply.status == 200

    async def _isolate(self, keys, instances, failure, reply, attempts, stats):
        """Fail only the instance the endpoint named, or bisect until the bad ones are alone."""
        stats.splits += 1
        index = named_instance(failure) if reply.status != 413 else None
        if index is not None and 0 <= index < len(keys) and error_message(reply.body):
            bad = Outcome(False, dead_letter(keys[index], "predict", failure, reply.status,
                                             attempts))
            rest = [i for i in range(len(keys)) if i != index]
            outcomes, sub = await self.predict([keys[i] for i in rest],
                                               [instances[i] for i in rest], attempts)
            stats.merge(sub)
            outcomes.insert(index, bad)
            return outcomes
        middle = len(keys) // 2
        halves = await asyncio.gather(
            self.predict(keys[:middle], instances[:middle], attempts),
            self.predict(keys[middle:], instances[middle:], attempts))
        outcomes = []
        for part, sub in halves:
            outcomes.extend(part)
            stats.merge(sub)
        return outcomes

    async def _send(self, instances: Sequence[bytes], stats: Stats) -> Reply:
        """POST one body, retrying what is worth retrying; the final Reply either way."""
        body = self._protocol.body(instances)
        policy = self._settings.retry
        refreshed = False
        attempt = 0
        while True:
            attempt += 1
            status, parsed, error, retry_after, cause = await self._attempt(
                body, force_refresh=refreshed and attempt > 1, stats=stats)
            if status == 401 and not refreshed and self._settings.auth != "none":
                refreshed = True
                stats.retries["auth"] += 1
                continue
            if cause is None:
                return Reply(status, parsed, error, attempt)
            if attempt > policy.max_retries:
                return Reply(status, parsed, f"{error} (gave up after {attempt} attempts)",
                             attempt)
            stats.retries[cause] += 1
            await asyncio.sleep(policy.delay(attempt - 1, retry_after, self._rng))

    async def _attempt(self, body: bytes, force_refresh: bool, stats: Stats):
        """One HTTP attempt: (status, parsed body, error, retry_after, retry cause or None)."""
        await self._wait_for_turn()
        headers = await self._tokens.headers(force_refresh)
        started = time.monotonic()
        async with self._slots:
            stats.requests += 1
            try:
                async with self._session.post(self._settings.endpoint, data=body,
                                              headers=headers) as response:
                    status = response.status
                    raw = await response.read()
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
            except asyncio.TimeoutError:
                return None, None, (f"no answer within --request_timeout_s="
                                    f"{self._settings.request_timeout_s}"), None, "timeout"
            except (aiohttp.ClientError, OSError) as e:
                return None, None, f"connection failed: {type(e).__name__}: {e}", None, \
                    "connection"
        stats.latencies_ms.append(int((time.monotonic() - started) * 1000))
        if status != 429:
            self._throttler.accepted()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        error = None if status == 200 else _describe(status, parsed, raw)
        if self._settings.retry.is_retryable(status):
            return status, parsed, error, retry_after, f"http_{status}"
        if status == 200 and not isinstance(parsed, dict):
            return status, None, f"response is not JSON: {raw[:200]!r}", None, "non_json"
        return status, parsed, error, retry_after, None

    async def _wait_for_turn(self):
        """Adaptive throttling first (after sustained 429s), then this worker's qps slot."""
        for _ in range(MAX_THROTTLED_WAITS):
            if not self._throttler.should_wait():
                break
            await asyncio.sleep(self._rng.uniform(*THROTTLED_WAIT_S))
        delay = self._limiter.reserve()
        if delay > 0:
            await asyncio.sleep(delay)


def _describe(status: int, parsed, raw: bytes) -> str:
    message = error_message(parsed)
    if message is None:
        message = raw[:300].decode("utf-8", "replace") or "(empty body)"
    return f"HTTP {status}: {message}"
