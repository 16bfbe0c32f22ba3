"""Tests for the local prediction server (``localserver``).

The model is tested in-process; everything else runs a real server subprocess
and talks to it over HTTP on 127.0.0.1 (urllib, and aiohttp for resets).
"""

import asyncio
import base64
import http.client
import io
import json
import random
import threading
import time
import urllib.error
import urllib.request

import aiohttp
import pytest
from PIL import Image

from localserver import demo, LocalServer, model
from localserver.demo import LABEL_COLOURS
from tests.helpers import DEFAULT_SWITCHES

LIMIT = 1572864

GREY = (128, 128, 128)

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
HTTP_TIMEOUT_S = 10


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def noisy_image(rgb, size=(24, 24), noise=20, seed=0, mode="RGB"):
    """An image of colour ``rgb`` with uniform per-channel noise of +-noise."""
    rng = random.Random(seed)
    pixels = [
        tuple(min(255, max(0, c + rng.randint(-noise, noise))) for c in rgb)
        for _ in range(size[0] * size[1])
    ]
    img = Image.new("RGB", size)
    img.putdata(pixels)
    return img.convert(mode)


def encode(img, fmt="PNG"):
    buffer = io.BytesIO()
    img.save(buffer, fmt)
    return buffer.getvalue()


def b64_image(rgb, fmt="PNG", **kwargs):
    return base64.b64encode(encode(noisy_image(rgb, **kwargs), fmt)).decode("ascii")


def tensor(rgb, height=3, width=4):
    return [[list(rgb) for _ in range(width)] for _ in range(height)]


def truncated_png():
    data = encode(noisy_image(LABEL_COLOURS["red"], size=(64, 64), noise=60))
    return data[: len(data) // 2]


def post(url, payload=None, data=None):
    """POST JSON (or raw ``data``); returns (status, headers, parsed JSON body)."""
    if data is None:
        data = json.dumps(payload).encode("utf-8")
    request = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/json"})
    try:
        with OPENER.open(request, timeout=HTTP_TIMEOUT_S) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers, json.loads(exc.read())


def get(url):
    with OPENER.open(url, timeout=HTTP_TIMEOUT_S) as response:
        return response.status, json.loads(response.read())


def vertex_body(*colours):
    return {"instances": [{"content": b64_image(c), "mimeType": "image/png"} for c in colours]}


def assert_google_error(status, body, code, google_status):
    assert status == code
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["status"] == google_status
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def post_concurrently(url, payload, count):
    """POST ``payload`` from ``count`` threads released together; returns statuses."""
    barrier = threading.Barrier(count, timeout=HTTP_TIMEOUT_S)
    statuses = []
    lock = threading.Lock()

    def worker():
        barrier.wait()
        status, _, _ = post(url, payload)
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HTTP_TIMEOUT_S)
    assert not any(thread.is_alive() for thread in threads)
    return statuses



# --------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------


def test_labels_match_prototypes():
    assert set(model.LABELS) == set(model.PROTOTYPES) == set(LABEL_COLOURS)
    assert model.PROTOTYPES["red"] == (255, 0, 0)
    assert model.PROTOTYPES["white"] == (255, 255, 255)
    assert model.PROTOTYPES["black"] == (0, 0, 0)


@pytest.mark.parametrize("label", sorted(LABEL_COLOURS))
def test_classify_each_label(label):
    ranked = model.classify_image(noisy_image(LABEL_COLOURS[label], seed=len(label)))
    assert ranked[0][0] == label
    assert ranked[0][1] > 0.5
    assert sorted(name for name, _ in ranked) == sorted(model.LABELS)
    scores = [score for _, score in ranked]
    assert scores == sorted(scores, reverse=True)
    assert sum(scores) == pytest.approx(1.0)
    assert all(isinstance(score, float) for score in scores)


def test_classify_bytes_png_jpeg_and_determinism():
    img = noisy_image(LABEL_COLOURS["magenta"], size=(40, 30))
    from_png = model.classify_bytes(encode(img, "PNG"))
    assert from_png == model.classify_bytes(encode(img, "PNG"))
    assert from_png == model.classify_image(img)
    assert model.classify_bytes(encode(img, "JPEG"))[0][0] == "magenta"


def test_alpha_is_composited_over_white():
    transparent_red = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    assert model.classify_image(transparent_red)[0][0] == "white"
    opaque_red = Image.new("RGBA", (10, 10), (255, 0, 0, 255))
    assert model.classify_bytes(encode(opaque_red))[0][0] == "red"
    assert model.classify_image(noisy_image(LABEL_COLOURS["blue"], mode="L"))[0][0] == "black"


def test_large_images_are_reduced():
    big = noisy_image(LABEL_COLOURS["cyan"], size=(640, 200), noise=5)
    assert model.reduce(big).size == (32, 10)
    assert model.classify_image(big)[0][0] == "cyan"


def test_ties_follow_label_order():
    ranked = model.score_colour((127.5, 127.5, 127.5))
    assert [label for label, _ in ranked] == list(model.LABELS)
    assert all(score == pytest.approx(1 / 8) for _, score in ranked)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty image data"),
    (b"definitely not an image", "not a recognised image format"),
    (truncated_png(), "cannot decode image"),
    (encode(noisy_image(LABEL_COLOURS["red"], size=(64, 64), noise=60), "JPEG")[:300],
     "cannot decode image"),
])
def test_classify_bytes_rejects_bad_data(data, reason):
    with pytest.raises(ValueError, match=reason):
        model.classify_bytes(data)


def test_classify_array():
    assert model.classify_array(tensor(LABEL_COLOURS["green"]))[0][0] == "green"
    assert model.classify_array([[[255, 255, 0]]])[0][0] == "yellow"


@pytest.mark.parametrize("rows", [
    [],
    "rgb",
    [[]],
    [[[1, 2, 3]], [[1, 2, 3], [4, 5, 6]]],
    [[[1, 2]]],
    [[[1, 2, 300]]],
    [[[1, 2, "3"]]],
    [[[1, 2, 3.5]]],
    [[1, 2, 3]],
])
def test_classify_array_rejects_bad_tensors(rows):
    with pytest.raises(ValueError):
        model.classify_array(rows)


# --------------------------------------------------------------------------
# routes and protocols
# --------------------------------------------------------------------------


def test_healthz_and_unknown_path(server):
    assert get(server.url + "/healthz")[0] == 200
    status, _, body = post(server.url + "/v1/projects/p/models/m:explain", {"instances": [1]})
    assert_google_error(status, body, 404, "NOT_FOUND")
    with pytest.raises(urllib.error.HTTPError) as info:
        get(server.url + "/nothing/here")
    assert info.value.code == 404
    info.value.close()


def test_mlengine_b64_named_and_tensor(server):
    payload = {"instances": [
        {"b64": b64_image(LABEL_COLOURS["red"])},
        {"key": "k1", "image": {"b64": b64_image(LABEL_COLOURS["blue"], "JPEG")}, "extra": [7]},
        tensor(LABEL_COLOURS["green"]),
        {"key": "k2", "image": tensor(LABEL_COLOURS["black"])},
    ]}
    status, _, body = post(server.endpoint("mlengine"), payload)
    assert status == 200
    predictions = body["predictions"]
    assert [p["labels"][0] for p in predictions] == ["red", "blue", "green", "black"]
    assert predictions[1]["key"] == "k1" and predictions[1]["extra"] == [7]
    assert predictions[3]["key"] == "k2"
    assert "key" not in predictions[0] and "key" not in predictions[2]
    for prediction in predictions:
        assert len(prediction["labels"]) == len(prediction["scores"]) == 8
        assert prediction["scores"] == sorted(prediction["scores"], reverse=True)
        assert sum(prediction["scores"]) == pytest.approx(1.0)
        assert prediction["scores"][0] > 0.5


def test_mlengine_any_path_prefix_and_versions(server):
    url = server.url + "/some/prefix/v1/projects/p/models/m/versions/v2:predict"
    status, _, body = post(url, {"instances": [{"b64": b64_image(LABEL_COLOURS["yellow"])}]})
    assert status == 200
    assert body["predictions"][0]["labels"][0] == "yellow"


def test_mlengine_one_bad_instance_fails_whole_request(server):
    good = {"b64": b64_image(LABEL_COLOURS["red"])}
    bad = {"b64": base64.b64encode(truncated_png()).decode("ascii")}
    status, _, body = post(server.endpoint("mlengine"), {"instances": [good, bad, good]})
    assert status == 400
    assert set(body) == {"error"}
    assert isinstance(body["error"], str)
    assert body["error"].startswith("Prediction failed: instance 1: ")
    status, _, body = post(server.endpoint("mlengine"), {"instances": [good, good, "text"]})
    assert status == 400 and body["error"].startswith("Prediction failed: instance 2: ")
    stats = server.stats()
    assert stats["predicted"] == 0
    assert stats["instances"] == 6
    assert stats["responses_by_status"] == {"400": 2}


def test_constant_answers_every_instance_without_decoding_it(server):
    instances = [{"b64": b64_image(LABEL_COLOURS["blue"])},
                 {"b64": base64.b64encode(truncated_png()).decode("ascii")}, "text"]
    status, _, body = post(server.endpoint("mlengine"), {"instances": instances})
    assert status == 400  # decoded: the truncated image fails the request
    server.configure(constant=1)
    status, _, body = post(server.endpoint("mlengine"), {"instances": instances})
    assert status == 200
    assert body["predictions"] == [{"labels": ["red"], "scores": [1.0]}] * 3
    assert server.stats()["predicted"] == 3


def test_automl_default_threshold(server):
    status, _, body = post(server.endpoint("automl"),
                           {"payload": {"image": {"imageBytes": b64_image(LABEL_COLOURS["yellow"])}}})
    assert status == 200
    assert [item["displayName"] for item in body["payload"]] == ["yellow"]
    assert body["payload"][0]["classification"]["score"] > 0.5


@pytest.mark.parametrize("threshold", ["0", 0, 0.0])
def test_automl_threshold_zero_returns_all_labels(server, threshold):
    status, _, body = post(server.endpoint("automl"), {
        "payload": {"image": {"imageBytes": b64_image(LABEL_COLOURS["cyan"])}},
        "params": {"score_threshold": threshold}})
    assert status == 200
    scores = [item["classification"]["score"] for item in body["payload"]]
    assert len(scores) == 8 and scores == sorted(scores, reverse=True)
    assert body["payload"][0]["displayName"] == "cyan"


def test_automl_nothing_passes_threshold_gives_empty_list(server):
    status, _, body = post(server.endpoint("automl"),
                           {"payload": {"image": {"imageBytes": b64_image(GREY, noise=0)}}})
    assert (status, body) == (200, {"payload": []})
    status, _, body = post(server.endpoint("automl"), {
        "payload": {"image": {"imageBytes": b64_image(LABEL_COLOURS["red"])}},
        "params": {"score_threshold": "1.01"}})
    assert (status, body) == (200, {"payload": []})


def test_automl_bad_image(server):
    status, _, body = post(server.endpoint("automl"),
                           {"payload": {"image": {"imageBytes": "bm90IGFuIGltYWdl"}}})
    assert_google_error(status, body, 400, "INVALID_ARGUMENT")


def test_vertex_roundtrip(server):
    status, _, body = post(server.endpoint("vertex"), vertex_body(LABEL_COLOURS["cyan"], LABEL_COLOURS["white"]))
    assert status == 200
    assert body["deployedModelId"] == "local-color-1"
    assert body["modelDisplayName"] == "local-color-classifier"
    assert isinstance(body["model"], str) and body["model"]
    first, second = body["predictions"]
    assert first["displayNames"][0] == "cyan" and second["displayNames"][0] == "white"
    for prediction in body["predictions"]:
        assert len(prediction["ids"]) == len(prediction["confidences"]) == 8
        assert prediction["ids"] == [str(model.LABELS.index(name))
                                     for name in prediction["displayNames"]]
        assert prediction["confidences"] == sorted(prediction["confidences"], reverse=True)


def test_vertex_parameters(server):
    payload = vertex_body(LABEL_COLOURS["magenta"], GREY)
    payload["parameters"] = {"confidenceThreshold": 0.5, "maxPredictions": 3}
    status, _, body = post(server.endpoint("vertex"), payload)
    assert status == 200
    magenta, grey = body["predictions"]
    assert magenta == {"ids": ["5"], "displayNames": ["magenta"],
                       "confidences": magenta["confidences"]}
    assert grey == {"ids": [], "displayNames": [], "confidences": []}
    payload["parameters"] = {"maxPredictions": 2}
    status, _, body = post(server.endpoint("vertex"), payload)
    assert [len(p["ids"]) for p in body["predictions"]] == [2, 2]


def test_vertex_bad_instance_names_its_index(server):
    payload = vertex_body(LABEL_COLOURS["red"], LABEL_COLOURS["red"])
    payload["instances"][1]["content"] = base64.b64encode(b"garbage").decode("ascii")
    status, _, body = post(server.endpoint("vertex"), payload)
    assert_google_error(status, body, 400, "INVALID_ARGUMENT")
    assert body["error"]["message"].startswith("Invalid image content at instances[1]: ")
    assert server.stats()["predicted"] == 0


@pytest.mark.parametrize("protocol, data", [
    ("mlengine", b"{not json"),
    ("mlengine", b"[1, 2]"),
    ("mlengine", b'{"something": "else"}'),
    ("mlengine", b'{"instances": []}'),
    ("automl", b'{"payload": {"image": {}}}'),
    ("automl", b'{"payload": {"image": {"imageBytes": "AA=="}}, '
               b'"params": {"score_threshold": "x"}}'),
    ("vertex", b'{"payload": {}}'),
    ("vertex", b'{"instances": [{}], "parameters": {"maxPredictions": 0}}'),
])
def test_invalid_bodies_get_google_errors(server, protocol, data):
    status, _, body = post(server.endpoint(protocol), data=data)
    assert_google_error(status, body, 400, "INVALID_ARGUMENT")


@pytest.mark.parametrize("protocol", ["mlengine", "automl", "vertex"])
def test_body_size_limit(server, protocol):
    data = json.dumps({"instances": [{"b64": "A" * LIMIT}]}).encode("ascii")
    assert len(data) > LIMIT
    status, _, body = post(server.endpoint(protocol), data=data)
    assert (status, body) == (400, {"error": {
        "code": 400,
        "message": "Request payload size exceeds the limit: 1572864 bytes.",
        "status": "INVALID_ARGUMENT"}})
    assert server.stats()["max_request_bytes"] == len(data)


def test_body_size_limit_is_configurable(server):
    server.configure(max_body_bytes=100)
    status, _, body = post(server.endpoint("vertex"), vertex_body(LABEL_COLOURS["red"]))
    assert_google_error(status, body, 400, "INVALID_ARGUMENT")
    assert body["error"]["message"] == "Request payload size exceeds the limit: 100 bytes."


# --------------------------------------------------------------------------
# quota and injected faults
# --------------------------------------------------------------------------


def test_quota_gives_429_with_retry_after(server):
    server.configure(quota_qps=2)
    payload = vertex_body(LABEL_COLOURS["red"])
    results = [post(server.endpoint("vertex"), payload) for _ in range(8)]
    statuses = [status for status, _, _ in results]
    assert statuses[:2] == [200, 200]  # the bucket starts full (2 tokens)
    rejected = [(headers, body) for status, headers, body in results if status == 429]
    assert len(rejected) >= 4
    for headers, body in rejected:
        assert headers["Retry-After"] == "1"
        assert_google_error(429, body, 429, "RESOURCE_EXHAUSTED")
    stats = server.stats()
    assert stats["quota_429"] == len(rejected)
    assert stats["requests"] == 8
    assert sum(stats["per_second"].values()) == statuses.count(200)
    assert stats["responses_by_status"] == {"200": statuses.count(200), "429": len(rejected)}


def test_injected_503(server):
    server.configure(fail_503_rate=1.0)
    for _ in range(3):
        status, _, body = post(server.endpoint("mlengine"), {"instances": [tensor(GREY)]})
        assert_google_error(status, body, 503, "UNAVAILABLE")
    stats = server.stats()
    assert stats["injected_503"] == 3
    assert stats["predicted"] == 0 and stats["instances"] == 0
    assert sum(stats["per_second"].values()) == 3  # admitted, then failed


def test_injected_429_has_retry_after_zero(server):
    server.configure(fail_429_rate=1.0)
    status, headers, body = post(server.endpoint("automl"),
                                 {"payload": {"image": {"imageBytes": b64_image(GREY)}}})
    assert_google_error(status, body, 429, "RESOURCE_EXHAUSTED")
    assert headers["Retry-After"] == "0"
    stats = server.stats()
    assert stats["injected_429"] == 1 and stats["quota_429"] == 0


async def aiohttp_post(url, payload):
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.post(url, json=payload) as response:
            return response.status, await response.read()


def test_reset_closes_connection_without_response(server):
    server.configure(reset_rate=1.0)
    payload = vertex_body(LABEL_COLOURS["red"])
    with pytest.raises(aiohttp.ClientConnectionError):
        asyncio.run(aiohttp_post(server.endpoint("vertex"), payload))
    with pytest.raises((ConnectionError, urllib.error.URLError, http.client.HTTPException)):
        post(server.endpoint("vertex"), payload)
    stats = server.stats()
    assert stats["injected_resets"] == 2
    assert stats["responses_by_status"] == {}
    assert stats["in_flight"] == 0
    server.configure(reset_rate=0)
    assert asyncio.run(aiohttp_post(server.endpoint("vertex"), payload))[0] == 200


def test_fault_draws_are_seeded(server):
    def statuses():
        server.configure(seed=7, fail_503_rate=0.5)
        return [post(server.endpoint("mlengine"), {"instances": [[[[0, 0, 0]]]]})[0]
                for _ in range(16)]

    first = statuses()
    assert first == statuses()
    assert set(first) == {200, 503}


# --------------------------------------------------------------------------
# stats, concurrency and config
# --------------------------------------------------------------------------


def test_stats_counters(server):
    bodies = [
        json.dumps({"instances": [tensor(LABEL_COLOURS[c]) for c in colours]}).encode("utf-8")
        for colours in (["red"], ["red", "green", "blue"], ["white", "black"])
    ]
    before = time.time()
    for data in bodies:
        assert post(server.endpoint("mlengine"), data=data)[0] == 200
    stats = server.stats()
    assert stats["requests"] == 3
    assert stats["instances"] == stats["predicted"] == 6
    assert stats["max_request_instances"] == 3
    assert stats["max_request_bytes"] == max(len(data) for data in bodies)
    assert stats["responses_by_status"] == {"200": 3}
    assert stats["max_in_flight"] == 1 and stats["in_flight"] == 0
    assert sum(stats["per_second"].values()) == 3
    assert all(int(before) <= second <= time.time() for second in stats["per_second"])
    assert stats["started_at"] <= before
    for key in ("quota_429", "injected_429", "injected_503", "injected_resets"):
        assert stats[key] == 0


def test_max_in_flight_with_latency(server):
    server.configure(latency_ms=300)
    started = time.monotonic()
    statuses = post_concurrently(server.endpoint("vertex"), vertex_body(LABEL_COLOURS["blue"]), 6)
    elapsed = time.monotonic() - started
    assert statuses == [200] * 6
    assert elapsed < 6 * 0.3  # served concurrently
    stats = server.stats()
    assert stats["max_in_flight"] == 6
    assert stats["in_flight"] == 0


def test_capacity_queues_requests(server):
    server.configure(latency_ms=200, capacity=2)
    started = time.monotonic()
    statuses = post_concurrently(server.endpoint("mlengine"), {"instances": [tensor(GREY)]}, 4)
    elapsed = time.monotonic() - started
    assert statuses == [200] * 4
    assert elapsed >= 0.4  # two waves of two
    assert server.stats()["max_in_flight"] == 4  # counted from arrival, waiting included


def test_config_and_stats_reset(server):
    config = server.configure(latency_ms="5", quota_qps=100, model_name="renamed")
    assert config == {**DEFAULT_SWITCHES, "latency_ms": 5.0, "quota_qps": 100.0, "model_name": "renamed"}
    assert get(server.url + "/config")[1] == config
    status, _, body = post(server.endpoint("vertex"), vertex_body(LABEL_COLOURS["red"]))
    assert status == 200 and body["modelDisplayName"] == "renamed"

    for bad in ({"no_such_switch": 1}, {"reset_rate": 2}, {"capacity": 0}, {"seed": "x"}):
        status, _, body = post(server.url + "/config", bad)
        assert_google_error(status, body, 400, "INVALID_ARGUMENT")
    assert get(server.url + "/config")[1] == config

    assert server.stats()["requests"] == 1
    server.reset_stats()
    stats = server.stats()
    assert stats["requests"] == stats["instances"] == stats["predicted"] == 0
    assert stats["responses_by_status"] == {} and stats["per_second"] == {}
    assert stats["max_request_bytes"] == stats["max_request_instances"] == 0


# --------------------------------------------------------------------------
# process lifecycle
# --------------------------------------------------------------------------


def test_cli_switches_and_clean_exit():
    with LocalServer(fail_503_rate=1.0, model_name="other-model") as running:
        assert running.url.startswith("http://127.0.0.1:")
        assert post(running.endpoint("vertex"), vertex_body(GREY))[0] == 503
        running.configure(fail_503_rate=0)
        status, _, body = post(running.endpoint("vertex"), vertex_body(GREY))
        assert status == 200 and body["modelDisplayName"] == "other-model"
    assert running.returncode == 0
    assert running.process is None


@pytest.mark.parametrize("switches, message", [
    ({"capacity": 0}, "capacity must be >= 1"),
    ({"bogus_switch": 1}, "unrecognized arguments"),
])
def test_start_failure_reports_stderr(switches, message):
    server = LocalServer(**switches)
    with pytest.raises(RuntimeError, match=message):
        server.start()
    assert server.process is None


def test_attach_reads_a_running_servers_stats(server):
    post(server.endpoint("mlengine"), {"instances": [[[[200, 30, 30]]]]})
    handle = LocalServer.attach(server.url + "/")
    assert handle.stats()["requests"] == server.stats()["requests"] == 1


def test_an_interrupted_demo_set_is_made_again_whole(tmp_path, monkeypatch):
    folder = tmp_path / "images"

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "write_photo_copies", interrupted)
    with pytest.raises(KeyboardInterrupt):
        demo.main([str(folder)])
    monkeypatch.undo()
    assert demo.main([str(folder)]) == 0
    assert len([p for p in folder.rglob("*") if p.is_file()]) == 53
    assert not (tmp_path / "images.partial").exists()


def test_demo_set_is_mostly_copies_of_the_demo_photos(tmp_path):
    folder = tmp_path / "images"
    assert demo.make_demo_set(str(folder), 48) == 53
    files = [p for p in folder.rglob("*") if p.is_file()]
    stems = [p.name.split("_")[0] for p in files if p.parent.name != "photos"]
    photo_copies = [s for s in stems if f"{s}.jpg" in demo.PHOTO_CLASSES]
    assert len(photo_copies) == 32 and len([s for s in stems if s in LABEL_COLOURS]) == 16
    assert {p.suffix for p in files} == {".jpg", ".jpeg", ".png", ".webp"}
    assert len(list((folder / "batch_b").iterdir())) == 6 + 11  # i % 3 == 0 of 16 and 32
    for path in files:
        if path.name != "corrupt.jpg":
            with Image.open(path) as img:
                img.load()


def test_constant_scores_answer_every_instance_without_decoding_it(server):
    instances = {"instances": [{"b64": "not an image"}] * 3}
    server.configure(constant=1000)  # an ImageNet classifier's softmax, unnamed
    status, _, body = post(server.endpoint("mlengine"), instances)
    assert status == 200 and len(body["predictions"]) == 3
    vector = body["predictions"][0]
    assert len(vector) == 1000 and abs(sum(vector) - 1) < 1e-9 and vector[0] == max(vector)
    assert body["predictions"][1] == body["predictions"][2] == vector


def test_constant_is_never_negative(server):
    with pytest.raises(RuntimeError, match="constant must be >= 0"):
        server.configure(constant=-1)
