"""Predict on Beam: one engine per process shared across DoFn copies and bundles, the
composite with TestPipeline, and whole jobs against the local server's fault switches
(the job-wide qps limit, and a run with 429s, 503s, resets and poison images)."""
import collections
import dataclasses
import gc
import logging
import pickle
import threading
import time
import weakref

import apache_beam as beam
import pytest
from apache_beam.internal import pickler
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from core.records import dead_letter, PredictRequest
from engine.client import ClientSettings, Outcome, Stats
from engine.engine import Engine, FailureThreshold, JobStopped, PredictSettings, Tally
from imaging.tensor import tensor_spec
from localserver.demo import LABEL_COLOURS, write_image
from pipeline.run import run
from protocols import make_protocol
from protocols.labels import LabelSpec
from tests.helpers import (assert_accounted, batch, DuplicatingProtocol, FAST_RETRIES,
                           labelled_images, LOCAL_RUNNER, read_dead_letters, read_predictions)
from transforms import metrics
from transforms.predict import _PredictFn, FAILED, Predict
from transforms.progress import Progress

LABELS = list(LABEL_COLOURS)


def predict_settings(server, qps_share=0.0, **client):
    values = dict(endpoint=server.endpoint("mlengine"), protocol=make_protocol("mlengine"),
                  max_concurrent_requests=4, retry=FAST_RETRIES)
    values.update(client)
    return PredictSettings(ClientSettings(**values), qps_share)


def test_an_engine_whose_client_cannot_be_made_leaves_no_loop_thread():
    settings = PredictSettings(ClientSettings(
        "http://example.com/v1/m:predict", make_protocol("mlengine"), auth="adc"), 0.0)
    before = {t for t in threading.enumerate() if t.name == "batch-predict-loop"}
    with pytest.raises(ValueError, match="plain http"):
        Engine(settings)
    # (an earlier test's engine may close meanwhile: only new threads count)
    assert not {t for t in threading.enumerate() if t.name == "batch-predict-loop"} - before


def requests_of(count, per_request, poison=()):
    keys, instances, truth = batch(make_protocol("mlengine"), count, poison)
    requests = [PredictRequest(tuple(keys[i:i + per_request]),
                               tuple(instances[i:i + per_request]))
                for i in range(0, count, per_request)]
    return requests, truth


def test_copies_of_a_dofn_share_one_engine_per_process(server):
    fn = _PredictFn(predict_settings(server))
    copies = [pickler.loads(pickler.dumps(fn)) for _ in range(3)]  # as a worker gets them
    for copy in copies:
        copy.setup()
    engine = copies[0]._engine
    assert all(copy._engine is engine for copy in copies)
    loop_thread, released = engine._thread, weakref.ref(engine)
    del engine
    for copy in copies:
        copy.teardown()
    other = pickler.loads(pickler.dumps(_PredictFn(predict_settings(server))))
    other.setup()  # another DoFn's engine: Beam's Shared lets go of the first one
    try:
        assert other._engine is not released()
        gc.collect()
        assert released() is None
        loop_thread.join(timeout=10)
        assert not loop_thread.is_alive()  # the released engine closed its pool and loop
    finally:
        other.teardown()


@pytest.mark.parametrize("protocol", [
    make_protocol("mlengine", "named", LabelSpec(("a", "b"), None, "out.scores")),
    make_protocol("vertex", score_threshold=0.5, parameters={"maxPredictions": 5}),
    make_protocol("automl", score_threshold=0.5),
    make_protocol("v2", "tensor", tensor=tensor_spec((4, 3), "imagenet", dtype="FP32",
                                                     layout="NCHW", resize="crop"),
                  binary=True, parameters={"top_k": {"n": 2}}).with_model("image", ("scores",)),
    make_protocol("mlengine", "tensor", tensor=tensor_spec((4, 3), "caffe", dtype="FP16"),
                  tensor_input_name="input_1")])
def test_settings_are_values_that_survive_beams_pickling(protocol):
    settings = PredictSettings(
        ClientSettings("http://127.0.0.1:1/v1/x:predict", protocol, retry=FAST_RETRIES),
        qps_share=2.5, failure_threshold=FailureThreshold(0.25, 10, 3))
    fn = pickler.loads(pickler.dumps(_PredictFn(settings)))
    assert fn._settings == settings and fn._settings is not settings
    assert pickle.loads(pickle.dumps(settings)) == settings
    assert hash(pickle.loads(pickle.dumps(settings))) == hash(settings)
    assert dataclasses.replace(settings, qps_share=1.0) != settings
    with pytest.raises(dataclasses.FrozenInstanceError):
        protocol.keep_prediction = False


def test_bundles_reuse_the_engine_and_emit_every_key_once(server):
    server.configure(latency_ms=30)
    requests, truth = requests_of(24, 3, poison={7})
    fn = pickle.loads(pickle.dumps(_PredictFn(predict_settings(server))))
    fn.setup()
    outputs, engines = [], []
    try:
        for bundle in (requests[:5], requests[5:]):
            fn.start_bundle()
            engines.append(fn._engine)
            for request in bundle:
                outputs.extend(fn.process(request))
            outputs.extend(v.value if isinstance(v, beam.pvalue.TaggedOutput) else v
                           for v in fn.finish_bundle())
    finally:
        fn.teardown()
    assert engines[0] is engines[1]
    unwrapped = [getattr(o, "value", o) for o in outputs]
    keys = collections.Counter(o["key"] for o in unwrapped)
    assert keys == collections.Counter(list(truth))
    predicted = {o["key"]: o["top_label"] for o in unwrapped if "top_label" in o}
    assert predicted == {k: v for k, v in truth.items() if v is not None}


def test_a_request_handed_over_while_every_slot_is_busy_starts_when_one_frees(server):
    server.configure(latency_ms=1000)
    requests, truth = requests_of(3, 1)
    fn = pickle.loads(pickle.dumps(_PredictFn(predict_settings(server,
                                                               max_concurrent_requests=1))))
    fn.setup()
    try:
        fn.start_bundle()
        outputs = list(fn.process(requests[0]))
        for _ in range(500):  # until the first request holds the only slot (at most 5 s)
            if fn._engine._client.attempting:
                break
            time.sleep(0.01)
        assert fn._engine._client.attempting == 1
        for request in requests[1:]:  # no wake-up: they wait for the first one to finish
            outputs.extend(fn.process(request))
        assert fn._engine._wake_pending is False and len(fn._engine._inbox) == 2
        outputs.extend(fn.finish_bundle())
    finally:
        fn.teardown()
    records = [getattr(o, "value", o) for o in outputs]
    assert {r["key"]: r["top_label"] for r in records} == truth


def tally_of(requests):
    """A Tally of finished requests, each given as [(ok, http_status), ...] per record."""
    tally = Tally()
    for records in requests:
        tally.add([Outcome(True, {"key": "k"}) if ok
                   else Outcome(False, dead_letter("k", "predict", f"HTTP {status}: no",
                                                   status, 1))
                   for ok, status in records])
    return tally


def test_failure_threshold_stops_when_the_first_requests_all_failed():
    policy = FailureThreshold(max_failed_fraction=0.5, min_records=100, first_requests=10)
    down = [[(False, None)]] * 9
    assert policy.reason(tally_of(down)) is None
    reason = policy.reason(tally_of(down + [[(False, 503)]]))
    assert reason.startswith("stopped early: every one of the first 10 requests failed")
    assert reason.endswith("last error: HTTP 503: no")
    assert policy.reason(tally_of([[(True, None)]] + down)) is None  # one answer: not down
    assert policy.reason(tally_of(down + [[(False, 400)]])) is None  # a bad image, refused


def test_failure_threshold_stops_past_the_failed_fraction_once_enough_were_tried():
    policy = FailureThreshold(max_failed_fraction=0.5, min_records=100)
    half = [[(True, None)] * 5 + [(False, 400)] * 5] * 9  # 90 records, half failed
    assert policy.reason(tally_of(half + [[(False, 400)] * 5])) is None  # 95 tried
    reason = policy.reason(tally_of(half + [[(False, 400)] * 10]))  # 100 tried, 55 failed
    assert reason.startswith("stopped early: 55 of 100 records failed at predict, more than "
                             "--failure_threshold=0.5")
    assert policy.reason(tally_of(half + [[(True, None)] * 10])) is None  # 45 of 100


def test_failure_threshold_of_1_never_stops():
    policy = FailureThreshold(max_failed_fraction=1.0, min_records=1)
    assert policy.reason(tally_of([[(False, None)] * 50] * 10)) is None


def test_a_stopped_engine_fails_every_later_bundle_of_the_process():
    settings = PredictSettings(ClientSettings(
        endpoint="http://127.0.0.1:9/v1/projects/p/models/m:predict",
        protocol=make_protocol("mlengine"), max_concurrent_requests=4,
        retry=dataclasses.replace(FAST_RETRIES, max_retries=0)),
        failure_threshold=FailureThreshold(first_requests=3))
    requests, _ = requests_of(12, 1)
    fn = pickle.loads(pickle.dumps(_PredictFn(settings)))
    fn.setup()
    try:
        fn.start_bundle()
        with pytest.raises(JobStopped, match="every one of the first 3 requests failed"):
            for request in requests[:6]:
                list(fn.process(request))
            list(fn.finish_bundle())
        fn.start_bundle()  # the next bundle on the same worker process
        with pytest.raises(JobStopped, match="every one of the first 3 requests failed"):
            list(fn.process(requests[6]))
    finally:
        fn.teardown()


def test_predict_composite_splits_outputs(server):
    requests, truth = requests_of(10, 4, poison={5})
    with TestPipeline() as p:
        results = p | beam.Create(requests) | Predict(predict_settings(server))
        assert_that(results.predictions | "OkKeys" >> beam.Map(lambda r: r["key"]),
                    equal_to([k for k, v in truth.items() if v]), label="predicted")
        assert_that(results[FAILED] | "BadKeys" >> beam.Map(lambda r: (r["key"], r["stage"])),
                    equal_to([(k, "predict") for k, v in truth.items() if v is None]),
                    label="failed")


def test_failures_are_counted_by_their_own_stage(server):
    requests, _ = requests_of(6, 3)
    p = TestPipeline(runner=LOCAL_RUNNER)  # every answer has one prediction too many
    results = (p | beam.Create(requests)
               | Predict(predict_settings(server, protocol=DuplicatingProtocol())))
    assert_that(results[FAILED] | beam.Map(lambda r: r["stage"]),
                equal_to(["parse"] * 6), label="stages")
    result = p.run()
    result.wait_until_finish()
    query = result.metrics().query(MetricsFilter().with_namespace(metrics.NAMESPACE))
    counts = {c.key.metric.name: c.committed for c in query["counters"]}
    assert counts["failed_parse"] == 6
    assert "failed_predict" not in counts


def test_progress_line(caplog):
    progress = Progress(every_s=0.0)
    stats = Stats(requests=3)
    stats.retries["http_503"] = 2
    outcomes = [Outcome(True, {}), Outcome(True, {}), Outcome(False, {})]
    with caplog.at_level(logging.INFO, logger="batch_predict"):
        progress.add(outcomes, stats)
    line = caplog.records[-1].getMessage()
    assert line.startswith("progress: 3 done, 1 failed,") and "img/s" in line
    assert "3 requests, 2 retries" in line


def job(tmp_path, server, *extra):
    return run(["--input", str(tmp_path / "images"),
                "--endpoint", server.endpoint("mlengine"),
                "--output", str(tmp_path / "out" / "pred"),
                *extra])


def test_qps_limits_the_whole_job_to_the_server_quota(tmp_path, server):
    qps = 20
    labelled_images(tmp_path / "images", LABELS * 10)  # 80 images, one per request
    server.configure(quota_qps=qps)
    summary = job(tmp_path, server, "--qps", str(qps), "--max_instances_per_request", "1",
                  "--max_concurrent_requests", "16")
    stats = server.stats()
    assert_accounted(summary)
    assert summary["predicted"] == 80 and summary["retries"] == 0
    assert stats["quota_429"] == 0 and stats["requests"] == 80
    seconds = sorted(stats["per_second"])
    full = [stats["per_second"][s] for s in seconds[1:-1]]  # first and last are partial
    assert len(full) >= 2
    assert sum(full) / len(full) == pytest.approx(qps, rel=0.15), stats["per_second"]
    assert max(full) <= qps * 1.25


def test_faults_and_poison_every_key_exactly_once(tmp_path, server):
    truth = labelled_images(tmp_path / "images", LABELS * 37 + ["red"])  # 297 images
    poison = set()
    for i in range(3):  # 1 %: truncated JPEGs whose header parses but pixels do not
        path = tmp_path / "images" / f"poison_{i}.jpg"
        write_image(str(path), "blue", seed=i, size=(256, 256), quality=95)
        path.write_bytes(path.read_bytes()[:6000])
        poison.add(str(path))
    server.configure(fail_429_rate=0.05, fail_503_rate=0.05, reset_rate=0.02, seed=11,
                     name_instances=0)
    summary = job(tmp_path, server, "--max_instances_per_request", "4",
                  "--max_concurrent_requests", "8", "--max_retries", "8")
    rows = read_predictions(str(tmp_path / "out" / "pred"))
    letters = read_dead_letters(str(tmp_path / "out" / "pred-errors"))
    seen = collections.Counter([r["key"] for r in rows] + [d["key"] for d in letters])
    assert seen == collections.Counter(list(truth) + list(poison))
    assert {r["key"]: r["top_label"] for r in rows} == truth
    assert {d["key"] for d in letters} == poison
    assert {(d["stage"], d["http_status"]) for d in letters} == {("predict", 400)}
    assert all("Invalid image content" in d["error"] or "Prediction failed" in d["error"]
               for d in letters)
    stats = server.stats()
    by_cause = summary["retries_by_cause"]
    assert by_cause.get("http_429", 0) == stats["injected_429"] > 0
    assert by_cause.get("http_503", 0) == stats["injected_503"] > 0
    assert by_cause.get("connection", 0) == stats["injected_resets"]
    assert summary["retries"] == sum(by_cause.values())
    assert summary["requests"] == stats["requests"]
    assert summary["splits"] >= 3
    assert summary["failed"] == 3 and summary["failed_by_stage"] == {"predict": 3}
    assert_accounted(summary)


def test_passthrough_values_ride_with_the_request_into_the_prediction_records(server):
    requests, truth = requests_of(12, 4, poison={5})  # the poison image splits its request
    with_values = [request._replace(fields=tuple({"customer": f"c-{key}"}
                                                 for key in request.keys))
                   for request in requests]
    fn = pickle.loads(pickle.dumps(_PredictFn(predict_settings(server))))
    fn.setup()
    try:
        fn.start_bundle()
        outputs = [o for request in with_values for o in fn.process(request)]
        outputs.extend(v.value if isinstance(v, beam.pvalue.TaggedOutput) else v
                       for v in fn.finish_bundle())
    finally:
        fn.teardown()
    unwrapped = [getattr(o, "value", o) for o in outputs]  # tagged, windowed: the record
    predictions = [o for o in unwrapped if "top_label" in o]
    failed = [o for o in unwrapped if "stage" in o]
    assert sorted(o["key"] for o in predictions) == sorted(k for k, v in truth.items() if v)
    assert all(o["customer"] == f"c-{o['key']}" for o in predictions)
    assert [sorted(o) for o in failed] == [sorted(dead_letter("k", "predict", "x"))]
