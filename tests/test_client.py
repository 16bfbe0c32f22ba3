"""PredictClient against the local server's fault switches: retries by cause, what is not
retried, splitting and isolation, auth with real ADC (a service-account key whose token
endpoint is served here on 127.0.0.1)."""
import asyncio
import base64
import http.server
import json
import random
import socketserver
import threading
import time
import urllib.parse

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from core.records import dead_letter
from engine.auth import needs_refresh, resolve_auth, SCOPES, TokenSource
from engine.client import (Answer, ClientSettings, culprit, PredictClient, read_answer,
                           RequestFailed, sort_response, splittable)
from engine.ratelimit import RateLimiter, Throttler
from engine.retry import RetryPolicy
from protocols import make_protocol
from protocols.google import MLEngine
from protocols.v2 import V2
from tests.helpers import batch, DuplicatingProtocol, FAST_RETRIES, reply, serving


def settings(server, name="mlengine", **overrides):
    values = dict(endpoint=server.endpoint(name), protocol=make_protocol(name),
                  max_concurrent_requests=8, request_timeout_s=10.0, retry=FAST_RETRIES,
                  throttle_window_s=2.0)  # short holds when faults are frequent
    values.update(overrides)
    return ClientSettings(**values)


async def _with_client(client_settings, work, qps=0.0, throttler=None):
    client = PredictClient(client_settings, RateLimiter(qps), throttler)
    await client.open()
    try:
        return await work(client)
    finally:
        await client.close()


def predict(client_settings, keys, instances):
    """(outcomes, stats) of one request."""
    return asyncio.run(_with_client(client_settings,
                                    lambda c: c.predict(keys, instances)))


def predict_many(client_settings, requests):
    """[(outcomes, stats)] of several requests sent concurrently by one client."""
    async def work(client):
        return await asyncio.gather(*(client.predict(k, i) for k, i in requests))
    return asyncio.run(_with_client(client_settings, work))


def split_outcomes(outcomes):
    ok = {o.record["key"]: o.record for o in outcomes if o.ok}
    failed = {o.record["key"]: o.record for o in outcomes if not o.ok}
    return ok, failed


# -- pure pieces ---------------------------------------------------------------------------

def test_responses_are_sorted_into_success_retryable_and_final():
    policy = RetryPolicy()
    assert sort_response(200, b'{"predictions": []}', None, policy).cause is None
    assert sort_response(200, b"<html>oops</html>", None, policy).cause == "non_json"
    assert sort_response(200, b"", None, policy).cause == "non_json"
    assert sort_response(200, b"\xff\xfe", None, policy).cause == "non_json"
    answer = sort_response(503, b"<html>busy</html>", 2.0, policy)
    assert (answer.cause, answer.retry_after) == ("http_503", 2.0)
    assert "busy" in answer.error
    answer = sort_response(400, b'{"error": {"code": 400, "message": "bad"}}', None, policy)
    assert answer.cause is None and answer.error == "HTTP 400: bad"
    for status in (401, 403, 404):
        assert sort_response(status, b"{}", None, policy).cause is None


def test_what_is_split_and_who_is_blamed():
    # A request's last answer: one still carrying a retryable cause ran out of retries.
    assert splittable(Answer(400, None, "x"))
    assert splittable(Answer(413, None, "x"))
    assert splittable(Answer(200, None, "x"))
    assert not splittable(Answer(200, None, "x", "non_json"))  # until retries ran out
    assert not splittable(Answer(None, None, "x", "connection"))
    for status in (None, 401, 403, 404):
        assert not splittable(Answer(status, None, "x"))
    assert not splittable(Answer(429, None, "x", "http_429"))
    for status in (500, 502, 503, 504):  # a server error that persisted through its retries
        assert splittable(Answer(status, None, "x", f"http_{status}"))
        assert not splittable(Answer(status, None, "x"))
    assert culprit("HTTP 400: Invalid image content at instances[2]: x", 400, 4) == 2
    assert culprit("HTTP 400: Prediction failed: instance 9: x", 400, 4) is None  # out of range
    assert culprit("HTTP 400: Request payload size exceeds the limit: 9 bytes.", 400, 4) is None
    assert culprit("HTTP 413: instance 1 too large", 413, 4) is None


def test_an_answer_is_read_into_one_outcome_per_key():
    protocol, endpoint = MLEngine(), "http://127.0.0.1:1/v1/projects/p/models/m:predict"
    body = {"predictions": [{"labels": ["cat"], "scores": [0.9]}, {"scores": "x"}]}
    good, bad = read_answer(protocol, endpoint, ["a", "b"], Answer(200, body, None), 3)
    assert good.ok and (good.record["key"], good.record["top_label"]) == ("a", "cat")
    assert good.record["model"] == "projects/p/models/m"
    assert not bad.ok and (bad.record["stage"], bad.record["attempts"]) == ("parse", 3)
    for answer, stage in [(Answer(503, None, "HTTP 503: busy", "http_503"), "predict"),
                          (Answer(200, {"error": "instance 1: bad"}, None), "predict"),
                          (Answer(200, {"predictions": [1]}, None), "parse"),
                          (Answer(200, [], None), "parse")]:
        with pytest.raises(RequestFailed) as raised:
            read_answer(protocol, endpoint, ["a", "b"], answer, 1)
        assert raised.value.stage == stage, answer


def test_text_from_the_server_that_is_no_unicode_is_written_escaped():
    """A lone surrogate (JSON's "\ud800": no character, no UTF-8 writer takes it) in the
    model id or in an error the server sends reaches the outputs as its escape."""
    protocol, endpoint = MLEngine(), "http://127.0.0.1:1/v1/projects/p/models/m:predict"
    body = protocol.decode(b'{"predictions":[[0.9]],"deployedModelId":"m\\ud800"}', {})
    (good,) = read_answer(protocol, endpoint, ["a"], Answer(200, body, None), 1)
    assert good.ok and good.record["model"] == "m\\ud800"
    answer = sort_response(400, b'{"error":"bad \\ud800 image"}', None, RetryPolicy(),
                           protocol.decode)
    with pytest.raises(RequestFailed) as raised:
        read_answer(protocol, endpoint, ["a"], answer, 1)
    letter = dead_letter("a", raised.value.stage, str(raised.value))
    assert letter["error"].endswith("bad \\ud800 image")
    json.dumps(letter, ensure_ascii=False).encode("utf-8")  # writable


def test_answers_too_odd_to_read_are_failures_not_exceptions():
    """An error naming an instance by a 5,000-digit number (past int()'s limit), and a body
    nested 5,000 deep (past the JSON reader's recursion) are each an Answer that fails."""
    assert culprit("HTTP 400: bad instance " + "9" * 5000, 400, 4) is None
    deep = b'{"predictions":' + b"[" * 5000 + b"]" * 5000 + b"}"
    answer = sort_response(200, deep, None, RetryPolicy(), MLEngine().decode)
    assert answer.body is None and answer.cause == "non_json"


def test_auth_modes():
    assert resolve_auth("auto", "https://ml.googleapis.com/v1/x:predict") == "adc"
    assert resolve_auth("auto", "https://us-central1-aiplatform.googleapis.com/v1/x:predict") \
        == "adc"
    assert resolve_auth("auto", "https://1234.us-central1-567.prediction.vertexai.goog/v1/"
                                "projects/p/locations/l/endpoints/1234:predict") == "adc"
    # any other https host gets no token unless asked for with --auth adc
    for other in ("https://models.example.com/v1/models/m:predict",
                  "https://googleapis.com.example.com/x:predict",
                  "https://evilgoogleapis.com/x:predict",
                  "https://prediction.vertexai.goog.example.org/x:predict"):
        assert resolve_auth("auto", other) == "none", other
    assert resolve_auth("adc", "https://models.example.com/v1/models/m:predict") == "adc"
    assert resolve_auth("auto", "http://127.0.0.1:8080/v1/x:predict") == "none"
    assert resolve_auth("auto", "http://example.com/v1/x:predict") == "none"
    assert resolve_auth("adc", "http://localhost:1/x:predict") == "adc"
    with pytest.raises(ValueError, match="never sent over plain http"):
        resolve_auth("adc", "http://example.com/v1/x:predict")
    with pytest.raises(ValueError):
        TokenSource("adc", "http://10.0.0.1/x:predict")
    with pytest.raises(ValueError):
        resolve_auth("basic", "https://x/y")


def test_tokens_are_refreshed_before_they_expire():
    import datetime
    now = datetime.datetime(2026, 1, 1, 12, 0, 0)
    assert needs_refresh(None, None, now)
    assert not needs_refresh("t", None, now)
    assert not needs_refresh("t", now + datetime.timedelta(minutes=30), now)
    assert needs_refresh("t", now + datetime.timedelta(minutes=4), now)
    aware = (now + datetime.timedelta(minutes=4)).replace(tzinfo=datetime.timezone.utc)
    assert needs_refresh("t", aware, now)


# -- against the local server --------------------------------------------------------------

def test_a_clean_request(server):
    keys, instances, truth = batch(MLEngine(), 6)
    outcomes, stats = predict(settings(server), keys, instances)
    assert [o.record["key"] for o in outcomes] == keys
    assert {o.record["key"]: o.record["top_label"] for o in outcomes} == truth
    assert (stats.requests, stats.instances, sum(stats.retries.values())) == (1, 6, 0)
    assert len(stats.latencies_ms) == 1


@pytest.mark.parametrize("switch,cause", [
    ("fail_503_rate", "http_503"), ("fail_429_rate", "http_429"), ("reset_rate", "connection")])
def test_transient_failures_are_retried_until_success(server, switch, cause):
    server.configure(**{switch: 0.5, "seed": 3})
    requests = [batch(MLEngine(), 2) for _ in range(12)]
    results = predict_many(settings(server, retry=RetryPolicy(8, 0.005, 0.02)),
                           [(k, i) for k, i, _ in requests])
    retries = sum(stats.retries[cause] for _, stats in results)
    assert all(o.ok for outcomes, _ in results for o in outcomes)
    assert retries > 0
    assert sum(stats.requests for _, stats in results) == 12 + retries
    assert set().union(*(stats.retries for _, stats in results)) == {cause}


def test_connection_failures_are_retried_then_every_key_fails(server):
    server.configure(reset_rate=1.0)
    keys, instances, _ = batch(MLEngine(), 4)
    outcomes, stats = predict(settings(server), keys, instances)
    ok, failed = split_outcomes(outcomes)
    assert not ok and list(failed) == keys
    assert {(d["stage"], d["http_status"], d["attempts"]) for d in failed.values()} == \
        {("predict", None, 4)}
    assert all("gave up after 4 attempts" in d["error"] for d in failed.values())
    assert stats.retries == {"connection": 3} and stats.requests == 4 and stats.splits == 0


def test_a_persistent_5xx_is_split_with_short_retries_until_each_image_is_alone(server):
    server.configure(fail_503_rate=1.0)
    keys, instances, _ = batch(MLEngine(), 4)
    outcomes, stats = predict(settings(server), keys, instances)
    ok, failed = split_outcomes(outcomes)
    assert not ok and list(failed) == keys
    # 4 attempts of the whole request, then 1 + SPLIT_RETRIES for each half and each quarter
    assert {(d["stage"], d["http_status"], d["attempts"]) for d in failed.values()} == \
        {("predict", 503, 4 + 2 + 2)}
    assert all("gave up after 2 attempts" in d["error"] for d in failed.values())
    assert stats.splits == 3 and stats.requests == 4 + 2 * 2 + 4 * 2
    assert stats.retries == {"http_503": 3 + 2 + 4}


class Unavailable(http.server.BaseHTTPRequestHandler):
    """503 to every POST, saying when to come back: `Retry-After: 1`."""
    posts = 0

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).posts += 1
        reply(self, 503, b'{"error": {"code": 503, "message": "down for maintenance"}}',
              Retry_After="1")

    def log_message(self, *args):
        pass


def test_a_5xx_that_says_when_to_come_back_is_not_split():
    """A 503 with Retry-After is the server's state, not a bad image: the request is retried
    as the server asks and then fails whole. Split, each half would wait Retry-After again:
    six waits of up to 300 s for a request of 32, while the job's early stop waits for it."""
    with serving(Unavailable) as httpd:
        endpoint = f"http://127.0.0.1:{httpd.server_address[1]}/v1/projects/p/models/m:predict"
        keys, instances, _ = batch(MLEngine(), 4)
        outcomes, stats = predict(ClientSettings(endpoint, MLEngine(), retry=RetryPolicy(
            max_retries=1, base_delay_s=0.01, max_delay_s=0.05)), keys, instances)
    assert stats.splits == 0 and stats.requests == Unavailable.posts == 2
    assert [(o.ok, o.record["stage"], o.record["http_status"], o.record["attempts"])
            for o in outcomes] == [(False, "predict", 503, 2)] * 4
    assert "down for maintenance" in outcomes[0].record["error"]


class DropsAfterAnError(socketserver.StreamRequestHandler):
    """Answers like uvicorn under KServe after a model exception: a 500 that does not say
    `Connection: close`, then (once its traceback is logged) the connection is closed with
    whatever the client sent meanwhile unread, which the client meets as a reset."""
    LINGER_S = 1.0
    answered = 0  # requests answered, across connections (one thread at a time here)

    def handle(self):
        for _ in range(100):
            head = self.rfile.readline()
            if not head:
                return
            length = 0
            for line in iter(self.rfile.readline, b"\r\n"):
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            count = len(json.loads(self.rfile.read(length))["instances"])
            DropsAfterAnError.answered += 1
            if DropsAfterAnError.answered == 1:
                self._reply(500, {"error": "OSError : image file is truncated"})
                time.sleep(self.LINGER_S)
                return
            prediction = {"labels": ["red", "green"], "scores": [0.9, 0.1]}
            self._reply(200, {"predictions": [prediction] * count})

    def _reply(self, status, payload):
        body = json.dumps(payload).encode()
        self.wfile.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode())
        if self.server.body_later:  # the client has the status before the body ends
            self.wfile.flush()
            time.sleep(0.2)
        self.wfile.write(body)
        self.wfile.flush()


@pytest.fixture(params=[False, True], ids=["body-with-status", "body-later"])
def drops_after_an_error(request):
    DropsAfterAnError.answered = 0
    with socketserver.TCPServer(("127.0.0.1", 0), DropsAfterAnError) as httpd:
        httpd.body_later = request.param
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1/projects/p/models/m:predict"
        httpd.shutdown()
        thread.join(10)


def test_the_connection_a_5xx_came_on_is_never_reused(drops_after_an_error):
    client_settings = ClientSettings(endpoint=drops_after_an_error, protocol=MLEngine(),
                                     retry=RetryPolicy(max_retries=0))

    async def work(client):
        first = await client.predict(["bad"], [MLEngine().instance("bad", b"x", "image/png")])
        second = await client.predict(["good"], [MLEngine().instance("good", b"y", "image/png")])
        return first, second

    (bad, _), (good, stats) = asyncio.run(_with_client(client_settings, work))
    assert not bad[0].ok and bad[0].record["http_status"] == 500
    assert good[0].ok, good[0].record  # sent on a new connection, not the dropped one
    assert stats.requests == 1


def test_timeouts_are_retried_then_fail(make_server):
    server = make_server(latency_ms=1500)  # its own: the slow requests outlive the test
    keys, instances, _ = batch(MLEngine(), 2)
    outcomes, stats = predict(
        settings(server, request_timeout_s=0.2, retry=RetryPolicy(1, 0.01, 0.01)),
        keys, instances)
    assert not any(o.ok for o in outcomes)
    assert stats.retries == {"timeout": 1} and stats.requests == 2
    assert "--request_timeout_s=0.2" in outcomes[0].record["error"]
    assert outcomes[0].record["attempts"] == 2


def test_bad_request_is_not_retried(server):
    # An AutoML body sent to a Vertex endpoint: a 400 with no instance to blame.
    client_settings = settings(server, "automl", endpoint=server.endpoint("vertex"))
    keys, instances, _ = batch(make_protocol("automl"), 1)
    outcomes, stats = predict(client_settings, keys, instances)
    assert stats.requests == 1 and not stats.retries
    record = outcomes[0].record
    assert (outcomes[0].ok, record["http_status"], record["attempts"]) == (False, 400, 1)
    assert "'instances' must be a non-empty list" in record["error"]


def test_not_found_is_neither_retried_nor_split(server):
    endpoint = server.url + "/v1/projects/p/nothing/here:predict"
    keys, instances, _ = batch(MLEngine(), 4)
    outcomes, stats = predict(settings(server, endpoint=endpoint), keys, instances)
    assert stats.requests == 1 and stats.splits == 0
    assert {(o.ok, o.record["http_status"]) for o in outcomes} == {(False, 404)}


@pytest.mark.parametrize("protocol", ["mlengine", "vertex"])
@pytest.mark.parametrize("name_instances", [1, 0])
def test_bad_instances_are_isolated_from_their_neighbours(server, protocol, name_instances):
    server.configure(name_instances=name_instances)
    poison = {2, 5}
    keys, instances, truth = batch(make_protocol(protocol), 8, poison)
    outcomes, stats = predict(settings(server, protocol), keys, instances)
    ok, failed = split_outcomes(outcomes)
    assert [o.record["key"] for o in outcomes] == keys
    assert {k: r["top_label"] for k, r in ok.items()} == \
        {k: v for k, v in truth.items() if v is not None}
    assert set(failed) == {keys[i] for i in poison}
    for letter in failed.values():
        assert (letter["stage"], letter["http_status"]) == ("predict", 400)
        assert "Invalid image content" in letter["error"] or "Prediction failed" in letter["error"]
    server_stats = server.stats()
    assert server_stats["predicted"] == 6 and stats.requests == server_stats["requests"]
    if name_instances:  # named: 8 -> the 2nd taken out, 7 -> the 5th taken out, 6 succeed
        assert (stats.requests, stats.splits) == (3, 2)
    else:  # bisected until the two bad ones are alone
        assert stats.splits >= 3 and stats.requests > 3


def test_request_over_the_size_limit_is_split(server):
    keys, instances, truth = batch(MLEngine(), 6)
    whole = len(MLEngine().body(instances))
    server.configure(max_body_bytes=whole // 2)
    outcomes, stats = predict(settings(server), keys, instances)
    assert {o.record["key"]: o.record["top_label"] for o in outcomes if o.ok} == truth
    assert stats.splits >= 1 and server.stats()["predicted"] == 6
    assert server.stats()["responses_by_status"]["400"] >= 1


def test_one_instance_over_the_size_limit_fails_alone(server):
    server.configure(max_body_bytes=100)
    keys, instances, _ = batch(MLEngine(), 1)
    outcomes, stats = predict(settings(server), keys, instances)
    assert stats.requests == 1 and not outcomes[0].ok
    assert "Request payload size exceeds the limit" in outcomes[0].record["error"]


class DroppingProtocol(MLEngine):
    """Leaves out the last instance of a request of several: one prediction too few."""

    def body(self, instances):
        return super().body(instances[:-1] if len(instances) > 1 else instances)


def test_short_response_is_split_never_truncated(server):
    keys, instances, truth = batch(MLEngine(), 5)
    outcomes, stats = predict(settings(server, protocol=DroppingProtocol()), keys, instances)
    assert {o.record["key"]: o.record["top_label"] for o in outcomes if o.ok} == truth
    assert stats.splits >= 1


class DroppingV2(V2):
    """v2 with the last image of a request of several left out, the count kept as sent."""

    def request(self, instances):
        return super().request(instances[:-1] if len(instances) > 1 else instances)


@pytest.mark.parametrize("binary", [False, True])
def test_short_v2_output_is_split_never_zipped(server, binary):
    protocol = DroppingV2(input_name="image", binary=binary)
    keys, instances, truth = batch(protocol, 5)
    outcomes, stats = predict(settings(server, "v2", protocol=protocol), keys, instances)
    assert {o.record["key"]: o.record["top_label"] for o in outcomes if o.ok} == truth
    assert stats.splits >= 1


def test_long_response_is_a_parse_error_for_every_key(server):
    keys, instances, _ = batch(MLEngine(), 3)
    outcomes, stats = predict(settings(server, protocol=DuplicatingProtocol()), keys, instances)
    assert not any(o.ok for o in outcomes)
    assert {o.record["stage"] for o in outcomes} == {"parse"}
    assert "2 predictions for 1 instances" in outcomes[0].record["error"]
    assert stats.requests == 5  # 3 -> 1 + 2 -> 1 + 1


def test_concurrency_is_capped(server):
    server.configure(latency_ms=150)
    requests = [batch(MLEngine(), 1)[:2] for _ in range(12)]
    results = predict_many(settings(server, max_concurrent_requests=3), requests)
    assert all(o.ok for outcomes, _ in results for o in outcomes)
    assert 1 < server.stats()["max_in_flight"] <= 3


def test_adaptive_throttling_backs_off_on_sustained_429_then_recovers(server):
    server.configure(fail_429_rate=1.0)
    client_settings = settings(server, max_concurrent_requests=4, throttle_window_s=2.0,
                               retry=RetryPolicy(1, 0.01, 0.02))

    throttler = Throttler(window_s=2.0, rng=random.Random(4))

    async def work(client):
        storm = await asyncio.gather(*(client.predict(*batch(MLEngine(), 1)[:2])
                                       for _ in range(8)))
        held_back = throttler.probability()
        server.configure(fail_429_rate=0.0)
        after = []
        deadline = time.monotonic() + 40
        while throttler.probability() > 0 and len(after) < 5000 and time.monotonic() < deadline:
            after.append(await client.predict(*batch(MLEngine(), 1)[:2]))
        recovered = throttler.probability() == 0
        tail = [await client.predict(*batch(MLEngine(), 1)[:2]) for _ in range(5)]
        return storm, held_back, after, recovered, tail

    storm, held_back, after, recovered, tail = asyncio.run(
        _with_client(client_settings, work, throttler=throttler))
    assert not any(o.ok for outcomes, _ in storm for o in outcomes)
    assert sum(stats.throttled_s for _, stats in storm) > 0
    assert held_back > 0.5
    assert recovered
    assert all(o.ok for outcomes, _ in after + tail for o in outcomes)
    assert sum(stats.throttled_s for _, stats in tail) == 0


# -- auth: real Application Default Credentials against a local token endpoint ---------------

class TokenEndpoint:
    """An OAuth token endpoint on 127.0.0.1 handing out `tokens` in turn (the last one
    repeats), recording the JWT assertions it is sent."""

    def __init__(self, tokens, expires_in=3600):
        self.tokens = list(tokens)
        self.expires_in = expires_in
        self.claims = []
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                form = urllib.parse.parse_qs(
                    self.rfile.read(int(self.headers["Content-Length"])).decode())
                payload = form["assertion"][0].split(".")[1]
                endpoint.claims.append(json.loads(base64.urlsafe_b64decode(
                    payload + "=" * (-len(payload) % 4))))
                index = min(len(endpoint.claims), len(endpoint.tokens)) - 1
                reply(self, 200, json.dumps({"access_token": endpoint.tokens[index],
                                             "expires_in": endpoint.expires_in,
                                             "token_type": "Bearer"}).encode(),
                      Content_Type="application/json")

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def private_key_pem():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@pytest.fixture
def adc(tmp_path, monkeypatch, private_key_pem):
    """Start a token endpoint and point ADC at a service-account key that uses it."""
    started = []

    def start(tokens, expires_in=3600):
        endpoint = TokenEndpoint(tokens, expires_in)
        started.append(endpoint)
        key_file = tmp_path / "service-account.json"
        key_file.write_text(json.dumps({
            "type": "service_account", "project_id": "local-project",
            "private_key_id": "local-key", "private_key": private_key_pem,
            "client_email": "predict@local-project.iam.gserviceaccount.com",
            "client_id": "1", "token_uri": endpoint.url}))
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        return endpoint

    yield start
    for endpoint in started:
        endpoint.stop()


def test_adc_token_is_sent_and_fetched_once_under_concurrency(server, adc, caplog):
    tokens = adc(["token-one"])
    server.configure(bearer_token="token-one")
    requests = [batch(MLEngine(), 2)[:2] for _ in range(10)]
    results = predict_many(settings(server, auth="adc"), requests)
    assert all(o.ok for outcomes, _ in results for o in outcomes)
    assert server.stats()["responses_by_status"] == {"200": 10}
    assert len(tokens.claims) == 1
    assert tokens.claims[0]["scope"] == " ".join(SCOPES)
    assert "token-one" not in caplog.text


def test_adc_token_is_refreshed_once_on_401(server, adc):
    tokens = adc(["stale", "fresh"])
    server.configure(bearer_token="fresh")
    keys, instances, truth = batch(MLEngine(), 3)
    outcomes, stats = predict(settings(server, auth="adc"), keys, instances)
    assert {o.record["key"]: o.record["top_label"] for o in outcomes} == truth
    assert stats.retries == {"unauthorized": 1} and stats.requests == 2
    assert len(tokens.claims) == 2
    assert server.stats()["responses_by_status"] == {"401": 1, "200": 1}


def test_adc_still_refused_after_one_refresh_fails_without_leaking_the_token(server, adc):
    adc(["secret-a", "secret-b"])
    server.configure(bearer_token="something-else")
    keys, instances, _ = batch(MLEngine(), 2)
    outcomes, stats = predict(settings(server, auth="adc"), keys, instances)
    assert stats.requests == 2 and stats.splits == 0
    for outcome in outcomes:
        assert not outcome.ok and outcome.record["http_status"] == 401
        assert "secret" not in json.dumps(outcome.record)


def test_adc_token_close_to_expiry_is_refreshed_before_use(server, adc):
    tokens = adc(["short-lived"], expires_in=120)  # inside the 5-minute refresh margin
    server.configure(bearer_token="short-lived")

    async def work(client):
        return [await client.predict(*batch(MLEngine(), 1)[:2]) for _ in range(3)]

    results = asyncio.run(_with_client(settings(server, auth="adc"), work))
    assert all(o.ok for outcomes, _ in results for o in outcomes)
    assert len(tokens.claims) == 3
    assert server.stats()["responses_by_status"] == {"200": 3}


def test_missing_credentials_fail_every_record_without_sending(server, tmp_path, monkeypatch):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    keys, instances, _ = batch(MLEngine(), 2)
    outcomes, stats = predict(settings(server, auth="adc"), keys, instances)
    assert stats.requests == 0 and server.stats()["requests"] == 0
    assert {o.record["stage"] for o in outcomes} == {"predict"}
    assert "no Application Default Credentials" in outcomes[0].record["error"]
