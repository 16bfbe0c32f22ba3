"""The async prediction client: sends packed requests with bounded concurrency, rate
limiting and retries, and isolates bad instances by splitting the requests they spoil.

It knows nothing of Beam; `transforms.predict` runs it on a worker's event loop. Every
request resolves to one `Outcome` per key: a prediction record or a dead-letter row.

One attempt: take a concurrency slot, pass the adaptive throttler, get a token, take this
process's qps turn (the last thing before the send), POST with the per-attempt timeout, and
read the reply body up to `max_response_bytes` (after decompression). Then:
- 429/500/502/503/504, connection failures, timeouts, 200 with a non-JSON body: retried
  with capped exponential backoff and full jitter (at least `Retry-After`), up to
  `max_retries`; every retry counted by cause.
- 401 with auth on: the token is refreshed and the request sent once more (counted as
  `unauthorized`); a failed token refresh is retried like the above (cause `auth`).
- 400/413 or a 200 that is no good answer (an `{"error"}` body, no predictions list, a
  prediction count that differs from the instance count): the request is split, halves
  retried, until the failing instances are alone; when the message names the instance
  (`instance 3`, `instances[3]`) that one is taken out directly. Size-limit refusals are
  always bisected.
- A 5xx that persists through its retries (a model server's answer to an exception on one
  bad image) is split the same way; the halves of such a split get SPLIT_RETRIES retries
  each, since the failure already proved persistent.
- Anything else (403, 404, other 4xx, exhausted 429s, timeouts and connection failures): every
  key fails as it is.
A good answer whose prediction for one instance cannot be read (see `protocols.labels`)
is a `parse` dead letter for that instance alone; its neighbours are written.
"""
import asyncio
import collections
import dataclasses
import json
import random
import time
import zlib
from typing import Counter, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import aiohttp

from core.records import dead_letter, prediction_record, Stage, utc_now, writable
from engine.auth import AuthError, TokenSource
from engine.ratelimit import RateLimiter, THROTTLE_DELAY_S, THROTTLE_WINDOW_S, Throttler
from engine.retry import parse_retry_after, RetryPolicy
from protocols.base import error_message, named_instance, Parsed, Protocol, ResponseError
from protocols.embedding import VectorLength

SPLIT_STATUSES = frozenset((400, 413))  # request-level refusals one instance may cause
#: Retry causes that mean the endpoint is throttling: their backoff is `Stats.backed_off_s`.
THROTTLED_CAUSES = frozenset(("http_429", "http_503"))
SPLIT_RETRIES = 1  # retries of each half of a request split after a persistent 5xx
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
ACCEPT_ENCODING = "gzip, deflate"
READ_CHUNK = 256 * 1024
SIZE_LIMIT_TEXT = "payload size exceeds the limit"
ERROR_SNIPPET = 300


class Outcome(NamedTuple):
    ok: bool
    record: dict  # a prediction record when ok, else a dead-letter row


@dataclasses.dataclass
class Stats:
    """What one `predict()` call did, for the caller to turn into metrics."""
    requests: int = 0  # HTTP attempts made
    instances: int = 0  # instances sent, over all attempts
    retries: Counter = dataclasses.field(default_factory=collections.Counter)
    splits: int = 0
    throttled_s: float = 0.0  # time held back by the adaptive throttler
    backed_off_s: float = 0.0  # time waited before retrying a 429 or 503 answer
    latencies_ms: List[int] = dataclasses.field(default_factory=list)


class Answer(NamedTuple):
    """What one attempt got. `cause` names a retryable failure (None: final either way), so
    the last Answer of a request that still has a cause ran out of retries."""
    status: Optional[int]  # None when no HTTP answer came
    body: object  # parsed JSON, or None
    error: Optional[str]  # why it is no success, when it is not
    cause: Optional[str] = None
    retry_after: Optional[float] = None

    @property
    def retryable(self) -> bool:
        """A failure worth another try; on a request's last answer, one whose retries ran
        out."""
        return self.cause is not None


class RequestFailed(Exception):
    """No answer to read predictions from: the whole request failed at `stage`."""

    def __init__(self, message: str, stage: Stage):
        super().__init__(message)
        self.message, self.stage = message, stage


@dataclasses.dataclass(frozen=True)
class ClientSettings:
    endpoint: str
    protocol: Protocol
    max_concurrent_requests: int = 16
    request_timeout_s: float = 60.0
    retry: RetryPolicy = RetryPolicy()
    auth: str = "none"
    throttle_window_s: float = THROTTLE_WINDOW_S
    max_response_bytes: int = MAX_RESPONSE_BYTES


class UnreadableBody(Exception):
    """A reply body that cannot be read: no good answer, split rather than retried."""


class ResponseTooLarge(UnreadableBody):
    """A reply body grew past `max_response_bytes` while it was read."""


class UnsupportedEncoding(UnreadableBody):
    """A reply body in a Content-Encoding the client did not ask for."""


def _json(raw: bytes, headers: Mapping[str, str]):
    return json.loads(raw) if raw else None


def sort_response(status: int, raw: bytes, retry_after: Optional[float],
                  policy: RetryPolicy, decode=_json,
                  headers: Optional[Mapping[str, str]] = None) -> Answer:
    """An HTTP response sorted into success, retryable failure or final failure, as an
    Answer: its body decoded (by the protocol), its failure described."""
    try:
        parsed = decode(raw, headers or {})
    except (ValueError, RecursionError):  # includes UnicodeDecodeError; nested too deeply
        parsed = None
    if policy.is_retryable(status):
        return Answer(status, parsed, describe(status, parsed, raw), f"http_{status}",
                      retry_after)
    if status == 200 and parsed is None:
        return Answer(status, None, f"response is not JSON: {_snippet(raw)}", "non_json")
    if status == 200:
        return Answer(status, parsed, None)
    return Answer(status, parsed, describe(status, parsed, raw))


def describe(status: int, parsed, raw: bytes) -> str:
    message = error_message(parsed)
    if message is None:
        message = _snippet(raw) or "(empty body)"
    return f"HTTP {status}: {message}"


def _snippet(raw: bytes) -> str:
    text = raw[:ERROR_SNIPPET].decode("utf-8", "replace")
    return text + ("..." if len(raw) > ERROR_SNIPPET else "")


def splittable(answer: Answer) -> bool:
    """Could one bad instance be to blame for a request's last answer? A 400/413, a 200 that
    is no good answer, or a 5xx that persisted through its retries, unless it said when to
    come back (Retry-After: the server's state, not an image's)."""
    if answer.retryable:
        return persistent_server_error(answer) and answer.retry_after is None
    return answer.status in SPLIT_STATUSES or answer.status == 200


def persistent_server_error(answer: Answer) -> bool:
    return answer.retryable and answer.status is not None and 500 <= answer.status <= 599


def body_decoder(content_encoding: Optional[str]):
    """A zlib decompressor for the reply's Content-Encoding (None: identity)."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        return None
    if encoding in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(32 + zlib.MAX_WBITS)  # gzip or zlib framing, told by header
    raise UnsupportedEncoding(f"unsupported Content-Encoding {encoding!r} (asked for "
                           f"{ACCEPT_ENCODING})")


async def read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, decompressed here at most `limit + 1` bytes at a time (aiohttp's own
    decompression inflates each network read whole), or ResponseTooLarge past `limit`."""
    decoder = body_decoder(response.headers.get("Content-Encoding"))
    chunks, size = [], 0

    def take(data: bytes):
        nonlocal size
        size += len(data)
        if size > limit:
            raise ResponseTooLarge(f"response body larger than --max_response_bytes={limit}")
        chunks.append(data)

    async for chunk in response.content.iter_chunked(READ_CHUNK):
        if decoder is None:
            take(chunk)
            continue
        while chunk:
            take(decoder.decompress(chunk, limit - size + 1))
            chunk = decoder.unconsumed_tail
    if decoder is not None:
        take(decoder.flush())
    return b"".join(chunks)


def discard_connection(response: aiohttp.ClientResponse):
    """Never let the connection `response` came on carry another request.

    Call before anything awaits. aiohttp pools a connection as soon as its body has ended:
    for a short reply that is already done when the response is returned (then the pooled
    connection is closed here, before any other task can take it); otherwise it is marked
    so that the pool closes it at the end of the body.
    """
    connection = response.connection
    if connection is not None and connection.protocol is not None:
        connection.protocol.force_close()
        return
    protocol = getattr(response, "_protocol", None)  # aiohttp keeps no public handle on it
    if protocol is not None:
        protocol.close()


def culprit(message: str, status: Optional[int], count: int) -> Optional[int]:
    """The index of the instance an error message blames, when it names one in range."""
    if status == 413 or SIZE_LIMIT_TEXT in (message or "").lower():
        return None
    index = named_instance(message)
    return index if index is not None and 0 <= index < count else None


def outcome(key: str, parsed: Parsed, model: str, now, status: Optional[int],
            attempts: int, lengths: Optional[VectorLength] = None) -> Outcome:
    """One instance's prediction record, or its `parse` dead letter when it was refused
    (or its vector is not of the run's one length, `lengths`)."""
    error = parsed.error
    if error is None and parsed.embedding is not None and lengths is not None:
        error = lengths.refusal(parsed.embedding)
    if error is not None:
        return Outcome(False, dead_letter(key, Stage.PARSE, error, status, attempts))
    return Outcome(True, prediction_record(key, parsed.labels, model, now, parsed.boxes,
                                           parsed.prediction, parsed.embedding))


def failed(keys: Sequence[str], stage: Stage, error: str, status: Optional[int],
           attempts: int) -> List[Outcome]:
    """A dead letter for each key."""
    return [Outcome(False, dead_letter(k, stage, error, status, attempts)) for k in keys]


def read_answer(protocol: Protocol, endpoint: str, keys: Sequence[str], answer: Answer,
                attempts: int, lengths: Optional[VectorLength] = None) -> List[Outcome]:
    """One Outcome per key out of a request's last answer (a `parse` dead letter for each
    prediction that cannot be read, or whose vector is not of the length `lengths` holds);
    RequestFailed when it carries no predictions to read."""
    if answer.error is not None:
        raise RequestFailed(answer.error, Stage.PREDICT)
    try:
        parsed = protocol.parse(answer.body, len(keys))
    except ResponseError as e:
        raise RequestFailed(str(e), Stage.PREDICT if error_message(answer.body) else Stage.PARSE)
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError,
            RecursionError) as e:
        raise RequestFailed(f"unreadable response: {type(e).__name__}: {e}", Stage.PARSE)
    model = writable(protocol.model_name(answer.body, endpoint))
    now = utc_now()
    return [outcome(k, p, model, now, answer.status, attempts, lengths)
            for k, p in zip(keys, parsed)]


class PredictClient:
    """One per worker process and event loop: a connection pool, a limiter and a throttler."""

    def __init__(self, settings: ClientSettings, limiter: RateLimiter,
                 throttler: Optional[Throttler] = None, rng: Optional[random.Random] = None):
        self._settings = settings
        self._protocol = settings.protocol
        self._lengths = VectorLength(settings.protocol.embedding.dimension)
        self._policy = settings.retry
        self._limiter = limiter
        self._throttler = throttler or Throttler(settings.throttle_window_s)
        self._max_hold_s = settings.throttle_window_s / 2
        self._rng = rng or random.Random()
        self.tokens = TokenSource(settings.auth, settings.endpoint)
        self._slots: Optional[asyncio.Semaphore] = None
        self._session: Optional[aiohttp.ClientSession] = None
        # Attempts holding or waiting for a slot. Written on the loop thread only; the Engine
        # reads it from its bundle threads as a hint (see Engine.submit).
        self.attempting = 0

    async def open(self):
        """Create the pool; call on the loop the client will run on."""
        self._slots = asyncio.Semaphore(self._settings.max_concurrent_requests)
        connector = aiohttp.TCPConnector(limit=self._settings.max_concurrent_requests,
                                         ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._settings.request_timeout_s),
            headers={"Content-Type": "application/json", "Accept-Encoding": ACCEPT_ENCODING},
            auto_decompress=False)  # read_capped decompresses, within --max_response_bytes

    async def close(self):
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def predict(self, keys: Sequence[str],
                      instances: Sequence[bytes]) -> Tuple[List[Outcome], Stats]:
        """One Outcome per key, in order, splitting the request where one instance spoils it."""
        stats = Stats()
        outcomes = await self._predict(tuple(keys), tuple(instances), 0, stats,
                                       self._policy.max_retries)
        return outcomes, stats

    async def _predict(self, keys, instances, prior_attempts: int, stats: Stats,
                       retries: int) -> List[Outcome]:
        body, headers = self._protocol.request(instances)
        answer, tries = await self._send(body, headers, len(keys), stats, retries)
        attempts = prior_attempts + tries
        try:
            return read_answer(self._protocol, self._settings.endpoint, keys, answer, attempts,
                               self._lengths)
        except RequestFailed as e:
            failure = e
        if len(keys) > 1 and splittable(answer):
            if persistent_server_error(answer):
                retries = min(retries, SPLIT_RETRIES)
            return await self._isolate(keys, instances, failure.message, answer.status,
                                       attempts, stats, retries)
        return failed(keys, failure.stage, failure.message, answer.status, attempts)

    async def _isolate(self, keys, instances, failure, status, attempts, stats, retries):
        """Fail only the instance the endpoint named, or bisect until the bad ones are alone."""
        stats.splits += 1
        index = culprit(failure, status, len(keys))
        if index is not None:
            rest = [i for i in range(len(keys)) if i != index]
            outcomes = await self._predict(tuple(keys[i] for i in rest),
                                           tuple(instances[i] for i in rest), attempts, stats,
                                           retries)
            bad = dead_letter(keys[index], Stage.PREDICT, failure, status, attempts)
            outcomes.insert(index, Outcome(False, bad))
            return outcomes
        middle = len(keys) // 2
        halves = await asyncio.gather(
            self._predict(keys[:middle], instances[:middle], attempts, stats, retries),
            self._predict(keys[middle:], instances[middle:], attempts, stats, retries))
        return halves[0] + halves[1]

    async def _send(self, body: bytes, headers: Dict[str, str], count: int, stats: Stats,
                    retries: int) -> Tuple[Answer, int]:
        """POST one body, retrying what is worth retrying: the last Answer and the number of
        attempts (an Answer with a `cause` left ran out of retries)."""
        refused_token = None
        refreshed = False
        attempt = 0
        while True:
            attempt += 1
            answer, token = await self._attempt(body, headers, count, refused_token, stats)
            refused_token = None
            if answer.status == 401 and self.tokens.enabled and not refreshed:
                refreshed, refused_token = True, token
                stats.retries["unauthorized"] += 1
                continue
            if answer.cause is None:
                return answer, attempt
            if attempt > retries:
                return answer._replace(
                    error=f"{answer.error} (gave up after {attempt} attempts)"), attempt
            stats.retries[answer.cause] += 1
            delay = self._policy.delay(attempt - 1, answer.retry_after, self._rng)
            if answer.cause in THROTTLED_CAUSES:
                stats.backed_off_s += delay
            await asyncio.sleep(delay)

    async def _attempt(self, body: bytes, headers: Dict[str, str], count: int,
                       refused_token: Optional[str],
                       stats: Stats) -> Tuple[Answer, Optional[str]]:
        """One HTTP attempt, holding a concurrency slot from the rate limit wait to the answer
        (so that requests leave at the limiter's pace, never in a burst)."""
        self.attempting += 1
        try:
            return await self._slotted_attempt(body, headers, count, refused_token, stats)
        finally:
            self.attempting -= 1

    async def _slotted_attempt(self, body, headers, count, refused_token, stats):
        async with self._slots:
            await self._hold_back_if_throttled(stats)
            token = None
            if self.tokens.enabled:
                try:
                    token = await self.tokens.token(refused_token)
                except AuthError as e:
                    return Answer(None, None, str(e), "auth" if e.retryable else None), None
            if token:
                headers = {**headers, "Authorization": f"Bearer {token}"}
            await self._limiter.turn()
            stats.requests += 1
            stats.instances += count
            started = time.monotonic()
            try:
                async with self._session.post(self._settings.endpoint, data=body,
                                              headers=headers) as response:
                    status = response.status
                    if status >= 500:  # servers may drop the connection after an error
                        discard_connection(response)  # unannounced (uvicorn does)
                    answered_headers = response.headers
                    retry_after = parse_retry_after(answered_headers.get("Retry-After"))
                    raw = await read_capped(response, self._settings.max_response_bytes)
            except asyncio.TimeoutError:
                self._throttler.answered(False)
                return Answer(None, None, f"no answer within --request_timeout_s="
                                          f"{self._settings.request_timeout_s:g}",
                              "timeout"), token
            except aiohttp.InvalidURL as e:  # no retry can mend the URL
                return Answer(None, None, f"invalid endpoint URL: {e}", None), token
            except (UnreadableBody, zlib.error) as e:  # no good answer: split, not retried
                self._throttler.answered(True)
                return Answer(status, None, f"HTTP {status}: unreadable body: {e}", None), token
            except (aiohttp.ClientError, OSError) as e:
                self._throttler.answered(False)
                return Answer(None, None, f"connection failed: {type(e).__name__}: {e}",
                              "connection"), token
        stats.latencies_ms.append(int((time.monotonic() - started) * 1000))
        self._throttler.answered(status != 429)
        return sort_response(status, raw, retry_after, self._policy, self._protocol.decode,
                             answered_headers), token

    async def _hold_back_if_throttled(self, stats: Stats):
        """Adaptive throttling (after sustained 429s)."""
        held = 0.0
        delay = min(THROTTLE_DELAY_S, self._max_hold_s)
        while held < self._max_hold_s and self._throttler.should_wait():
            wait = min(self._rng.uniform(0.5, 1.5) * delay, self._max_hold_s - held)
            held += wait
            await asyncio.sleep(wait)
        stats.throttled_s += held
