"""Wire formats and response parsing of the three protocols (pure functions)."""
import base64
import datetime
import json
import pickle

import pytest

from core.records import prediction_record, to_json_row
from protocols import make_protocol
from protocols.base import named_instance, Parsed, prediction_text, resource_name, ResponseError
from protocols.google import AutoML, MLEngine, Vertex
from protocols.labels import LabelSpec

NOW = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)


# -- bodies --------------------------------------------------------------------------------

@pytest.mark.parametrize("data", [b"", b"\xff", b"\xfb\xef", bytes(range(256)) * 3])
def test_b64_instances_are_the_json_encoder_s_bytes(data):
    """Instances are built without the JSON encoder: byte for byte what it would give."""
    def dumps(obj):
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    text = base64.b64encode(data).decode("ascii")
    assert make_protocol("mlengine").instance("k", data, "image/png") == dumps({"b64": text})
    assert make_protocol("vertex").instance("k", data, "image/png") == dumps(
        {"content": text, "mimeType": "image/png"})
    assert make_protocol("automl").instance("k", data, "image/png") == dumps(
        {"image": {"imageBytes": text}})
    assert make_protocol("v2").instance("k", data, "image/png") == dumps(text)


@pytest.mark.parametrize("protocol", [
    make_protocol("mlengine"), make_protocol("mlengine", "named"),
    make_protocol("vertex"), make_protocol("vertex", score_threshold=0.3),
    make_protocol("automl"), make_protocol("automl", score_threshold=0.5)])
def test_body_is_valid_json_and_body_size_is_exact(protocol):
    count = 1 if protocol.name == "automl" else 3
    instances = [protocol.instance(f"k{i}", bytes([i]) * (10 + i), "image/png")
                 for i in range(count)]
    body = protocol.body(instances)
    assert protocol.body_size([len(i) for i in instances]) == len(body)
    decoded = json.loads(body)
    if protocol.name == "automl":
        assert set(decoded["payload"]["image"]) == {"imageBytes"}
        assert ("params" in decoded) == (protocol.score_threshold is not None)
    else:
        assert len(decoded["instances"]) == count


def test_vertex_instance_and_parameters():
    protocol = make_protocol("vertex", score_threshold=0.25)
    body = json.loads(protocol.body([protocol.instance("k", b"\x89PNG", "image/png")]))
    assert body == {"instances": [{"content": "iVBORw==", "mimeType": "image/png"}],
                    "parameters": {"confidenceThreshold": 0.25}}


def test_named_instances_carry_the_key():
    protocol = make_protocol("mlengine", "named")
    assert json.loads(protocol.instance("gs://b/x.jpg", b"ab", "image/jpeg")) == \
        {"key": "gs://b/x.jpg", "image": {"b64": "YWI="}}


def test_protocols_are_equal_by_value_so_workers_share_one_engine():
    a, b = make_protocol("vertex", score_threshold=0.5), make_protocol("vertex",
                                                                      score_threshold=0.5)
    assert a == b and hash(a) == hash(b) and a is not b
    assert pickle.loads(pickle.dumps(a)) == a
    assert a != make_protocol("vertex", score_threshold=0.6)
    assert make_protocol("mlengine") != make_protocol("mlengine", "named")
    assert make_protocol("automl") != make_protocol("mlengine")


# -- AutoML --------------------------------------------------------------------------------

def test_automl_payload_with_other_label():
    response = {"payload": [
        {"displayName": "roses", "classification": {"score": 0.91}},
        {"displayName": "--other--", "classification": {"score": 0.09}}]}
    assert AutoML().parse(response, 1) == [Parsed([("roses", 0.91), ("--other--", 0.09)],
                                                  prediction=prediction_text(
                                                      response["payload"]))]


@pytest.mark.parametrize("protocol, raw", [
    ("automl", b'{"payload":[{"displayName":"rose","classification":{"score":1%s}}]}'),
    ("vertex", b'{"predictions":[{"displayNames":["a"],"confidences":[0.5],'
               b'"bboxes":[[0,1%s,0,1]]}]}'),
    ("mlengine", b'{"predictions":[{"a":1%s}]}')])
def test_an_int_too_large_for_a_float_is_refused(protocol, raw):
    protocol = make_protocol(protocol)
    (parsed,) = protocol.parse(protocol.decode(raw % (b"0" * 400), {}), 1)
    assert parsed.error is not None and "too large" in parsed.error


def test_automl_label_that_is_no_unicode_is_refused():
    response = AutoML().decode(b'{"payload":[{"displayName":"rose\\ud800",'
                               b'"classification":{"score":0.9}}]}', {})
    (parsed,) = AutoML().parse(response, 1)
    assert parsed.error is not None and "Unicode" in parsed.error
    assert parsed.error.isascii()


@pytest.mark.parametrize("response", [{"payload": []}, {}])
def test_automl_empty_payload_is_no_labels(response):
    assert AutoML().parse(response, 1) == [Parsed([], prediction="[]")]
    record = prediction_record("k", [], "m", NOW)
    assert record["top_label"] is None and record["top_score"] is None and record["labels"] == []


@pytest.mark.parametrize("response, message", [
    ({"error": {"code": 3, "message": "image too large"}}, "image too large"),
    ({"error": "quota"}, "quota")])
def test_automl_error_body_is_an_error_not_an_empty_prediction(response, message):
    with pytest.raises(ResponseError, match=message):
        AutoML().parse(response, 1)


@pytest.mark.parametrize("response", [{"payload": "roses"}, [1, 2]])
def test_automl_malformed_response_is_an_error(response):
    with pytest.raises(ResponseError):
        AutoML().parse(response, 1)


@pytest.mark.parametrize("item, message", [
    ({"displayName": "x"}, "unexpected AutoML payload item"),
    ({"displayName": "x", "classification": {"score": "high"}}, "not a number"),
    ({"displayName": "x", "classification": {"score": float("nan")}}, "not a finite number"),
    ({"displayName": 3, "classification": {"score": 0.5}}, "not a name")])
def test_automl_unreadable_payload_is_refused(item, message):
    [parsed] = AutoML().parse({"payload": [item]}, 1)
    assert parsed.labels == [] and message in parsed.error


# -- ML Engine -----------------------------------------------------------------------------

def test_mlengine_dict_predictions_in_order():
    response = {"predictions": [
        {"key": "a", "labels": ["cat", "dog"], "scores": [0.8, 0.2]},
        {"classes": ["cat", "dog"], "probabilities": [0.1, 0.9]},
        {"label": "dog", "score": 0.7}]}
    parsed = MLEngine().parse(response, 3)
    assert [p.labels for p in parsed] == [
        [("cat", 0.8), ("dog", 0.2)], [("cat", 0.1), ("dog", 0.9)], [("dog", 0.7)]]
    assert [json.loads(p.prediction) for p in parsed] == response["predictions"]
    assert parsed[0].prediction == '{"key":"a","labels":["cat","dog"],"scores":[0.8,0.2]}'


def test_mlengine_score_lists_take_names_from_the_label_set():
    protocol = make_protocol("mlengine", labels=LabelSpec(("cat", "dog", "cow")))
    response = {"predictions": [[0.1, 0.7, 0.2], {"scores": [0.5, 0.25, 0.25]},
                                {"classes": 2, "probabilities": [0, 0, 1]}]}
    assert [p.labels for p in protocol.parse(response, 3)] == [
        [("cat", 0.1), ("dog", 0.7), ("cow", 0.2)],
        [("cat", 0.5), ("dog", 0.25), ("cow", 0.25)],
        [("cat", 0.0), ("dog", 0.0), ("cow", 1.0)]]
    [parsed] = protocol.parse({"predictions": [[0.5, 0.5]]}, 1)
    assert "--label_names or --label_names_file names 3" in parsed.error


def test_one_unreadable_prediction_is_refused_alone():
    response = {"predictions": [{"labels": ["a"], "scores": [0.5]},
                                {"labels": ["a"], "scores": [float("nan")]},
                                {"labels": ["b"], "scores": ["Infinity"]},
                                {"labels": ["a"], "scores": [0.5], "logits": [float("inf")]}]}
    parsed = MLEngine().parse(response, 4)
    assert [p.error is None for p in parsed] == [True, False, False, False]
    assert all("finite" in p.error for p in parsed[1:])
    assert parsed[0] == Parsed([("a", 0.5)], prediction='{"labels":["a"],"scores":[0.5]}')
    # without the prediction column, only the scores must be finite
    kept = MLEngine(keep_prediction=False).parse(response, 4)
    assert [p.error is None for p in kept] == [True, False, False, True]
    assert kept[3] == Parsed([("a", 0.5)], prediction=None)


def test_custom_fields_reach_the_parser():
    protocol = make_protocol("vertex", labels=LabelSpec((), "out.n", "out.s"))
    [parsed] = protocol.parse({"predictions": [{"out": {"n": ["x"], "s": [1]}}]}, 1)
    assert parsed.labels == [("x", 1.0)]


def test_automl_takes_no_label_flags():
    with pytest.raises(ValueError, match="automl answers one fixed shape"):
        make_protocol("automl", labels=LabelSpec(("a",)))


def test_mlengine_whole_request_error_names_the_instance():
    with pytest.raises(ResponseError) as raised:
        MLEngine().parse({"error": "Prediction failed: instance 2: bad image"}, 4)
    assert named_instance(str(raised.value)) == 2
    with pytest.raises(ResponseError) as raised:
        MLEngine().parse({"error": {"code": 400, "message": "Bad input"}}, 4)
    assert named_instance(str(raised.value)) is None and "Bad input" in str(raised.value)


@pytest.mark.parametrize("count", [2, 4])
def test_prediction_count_mismatch_is_an_error_never_truncated(count):
    response = {"predictions": [{"label": "a", "score": 1.0}] * 3}
    with pytest.raises(ResponseError, match=f"3 predictions for {count} instances"):
        MLEngine().parse(response, count)


def test_named_instance():
    assert named_instance("Prediction failed: instance 3: x") == 3
    assert named_instance("Invalid image content at instances[12]: y") == 12
    assert named_instance("Request payload size exceeds the limit: 1572864 bytes.") is None
    assert named_instance("Too many instances, max 32") is None
    assert named_instance("") is None


# -- Vertex --------------------------------------------------------------------------------

def test_vertex_classification_and_model_name():
    response = {"predictions": [{"ids": ["1", "2"], "displayNames": ["rose", "tulip"],
                                 "confidences": [0.3, 0.7]}],
                "deployedModelId": "123"}
    parsed = Vertex().parse(response, 1)
    assert [(p.labels, p.boxes) for p in parsed] == [([("rose", 0.3), ("tulip", 0.7)], None)]
    endpoint = "https://x-aiplatform.googleapis.com/v1/projects/p/locations/l/endpoints/e:predict"
    assert Vertex().model_name(response, endpoint) == "123"
    assert Vertex().model_name({}, endpoint) == "projects/p/locations/l/endpoints/e"
    assert resource_name("http://127.0.0.1:9/v1/projects/p/models/m:predict") == \
        "projects/p/models/m"


def test_vertex_detection_boxes():
    response = {"predictions": [{
        "ids": ["1", "1", "2"], "displayNames": ["cat", "cat", "dog"],
        "confidences": [0.6, 0.9, 0.4],
        "bboxes": [[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8], [0, 1, 0, 1]]}]}
    [parsed] = Vertex().parse(response, 1)
    assert parsed.labels == [("cat", 0.6), ("cat", 0.9), ("dog", 0.4)]
    assert parsed.boxes == [
        {"label": "cat", "score": 0.9, "x_min": 0.5, "x_max": 0.6, "y_min": 0.7, "y_max": 0.8},
        {"label": "cat", "score": 0.6, "x_min": 0.1, "x_max": 0.2, "y_min": 0.3, "y_max": 0.4},
        {"label": "dog", "score": 0.4, "x_min": 0.0, "x_max": 1.0, "y_min": 0.0, "y_max": 1.0}]
    record = prediction_record("k", parsed.labels, "m", NOW, parsed.boxes)
    assert record["top_label"] == "cat" and record["top_score"] == 0.9
    assert to_json_row(record)["boxes"] == parsed.boxes


@pytest.mark.parametrize("bboxes", [[[0, 1, 0, 1]], [[0, 1, 0], [0, 1, 0, 1]], "x",
                                    [[0, 1, 0, 1], [0, "NaN", 0, 1]]])
def test_vertex_detection_malformed_boxes_are_refused(bboxes):
    response = {"predictions": [{"displayNames": ["a", "b"], "confidences": [0.5, 0.5],
                                 "bboxes": bboxes}]}
    [parsed] = Vertex(keep_prediction=False).parse(response, 1)
    assert parsed.error and parsed.labels == [] and parsed.boxes is None


def test_classification_rows_have_no_boxes_in_json():
    record = prediction_record("k", [("a", 0.2), ("b", 0.8)], "m", NOW)
    assert record["boxes"] is None
    row = to_json_row(record)
    assert "boxes" not in row and row["predicted_at"] == "2026-01-02 03:04:05.000000"
    assert [l["label"] for l in row["labels"]] == ["b", "a"]


def test_labels_of_equal_score_keep_the_models_order():
    record = prediction_record("k", [("d", 0.25), ("b", 0.5), ("c", 0.25), ("a", 0.5)], "m", NOW)
    assert [l["label"] for l in record["labels"]] == ["b", "a", "d", "c"]
    assert (record["top_label"], record["top_score"]) == ("b", 0.5)
