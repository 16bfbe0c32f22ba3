"""Reading one prediction into named, validated labels (protocols.labels, pure functions)."""
import json
import logging

import pytest

from pipeline.label_names import check_label_names, load_label_names, parse_label_names
from protocols.labels import (check_field_path, class_index, INDEX_WARNING, label_name, LabelError,
                              LabelScores, LabelSpec, name_scores, pair, read_labels, score,
                              triton_class, value_at, warn_if_indexed)

NAMES = ("cat", "dog", "cow")


def labels(prediction, names=(), **fields):
    return read_labels(prediction, LabelSpec(tuple(names), **fields))


# -- scores --------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [(0.5, 0.5), (1, 1.0), ("0.25", 0.25), (0, 0.0)])
def test_score_accepts_numbers_and_numeric_strings(value, expected):
    assert score(value) == expected


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), "NaN",
                                   "Infinity", "-Infinity", "nan", 1e999])
def test_non_finite_scores_are_refused(value):
    with pytest.raises(LabelError, match="not a finite number"):
        score(value)


@pytest.mark.parametrize("value", [True, None, "high", [0.5], {"s": 1}])
def test_non_numbers_are_refused(value):
    with pytest.raises(LabelError, match="not a number"):
        score(value)


# -- names ---------------------------------------------------------------------------------

def test_class_index():
    assert [class_index(v) for v in (2, 2.0, "2", "cat", 2.5, True, "²", "-1")] == \
        [2, 2, 2, None, None, None, None, None]


def test_label_name_maps_indices_through_names_and_checks_names():
    assert label_name("dog", NAMES) == ("dog", False)
    assert label_name(2, NAMES) == ("cow", False)
    assert label_name("1", NAMES) == ("dog", False)
    assert label_name(1, ()) == ("1", True)
    assert label_name("tabby", ()) == ("tabby", False)
    with pytest.raises(LabelError, match="class index 3 is outside the 3 names"):
        label_name(3, NAMES)
    with pytest.raises(LabelError, match="'tabby' is not one of the 3 names"):
        label_name("tabby", NAMES)
    with pytest.raises(LabelError, match="not a name or a class index"):
        label_name(None, ())


def test_digit_names_given_by_the_user_are_names_first():
    assert label_name("20", ("10", "20", "30")) == ("20", False)


def test_pair_and_name_scores():
    assert pair(["a", "b"], [0.2, 0.8]) == LabelScores([("a", 0.2), ("b", 0.8)], False)
    assert name_scores([0.1, 0.9], ("x", "y")) == LabelScores([("x", 0.1), ("y", 0.9)], False)
    assert name_scores([0.1, 0.9]) == LabelScores([("0", 0.1), ("1", 0.9)], True)
    assert name_scores([]) == LabelScores([], False)
    assert name_scores([0.5] * 1000).labels[999] == ("999", 0.5)  # a long vector, named alike
    with pytest.raises(LabelError, match="2 labels but 3 scores"):
        pair(["a", "b"], [1, 2, 3])
    with pytest.raises(LabelError, match="2 scores but --label_names or --label_names_file "
                                         "names 3"):
        name_scores([0.5, 0.5], NAMES)


# -- shapes --------------------------------------------------------------------------------

P = [0.1, 0.7, 0.2]


def test_tf_canned_estimator_without_vocabulary():
    prediction = {"class_ids": [1], "classes": ["1"], "probabilities": P,
                  "logits": [-1.0, 0.9, -0.2], "all_class_ids": [0, 1, 2],
                  "all_classes": ["0", "1", "2"]}
    assert labels(prediction) == LabelScores([("0", 0.1), ("1", 0.7), ("2", 0.2)], True)
    assert labels(prediction, NAMES) == LabelScores([("cat", 0.1), ("dog", 0.7), ("cow", 0.2)])


def test_tf_canned_estimator_with_vocabulary():
    prediction = {"class_ids": [1], "classes": ["dog"], "probabilities": P,
                  "all_class_ids": [0, 1, 2], "all_classes": list(NAMES)}
    assert labels(prediction) == LabelScores([("cat", 0.1), ("dog", 0.7), ("cow", 0.2)])
    assert labels(prediction, NAMES).labels == labels(prediction).labels


def test_tf_canned_binary_logistic_head():
    prediction = {"logistic": [0.8], "probabilities": [0.2, 0.8], "class_ids": [1],
                  "classes": ["1"], "all_class_ids": [0, 1], "all_classes": ["0", "1"],
                  "logits": [1.39]}
    assert labels(prediction, ("no", "yes")).labels == [("no", 0.2), ("yes", 0.8)]


def test_tf_top_class_name_beside_unnamed_scores_is_never_mislabelled():
    prediction = {"class_ids": [1], "classes": ["dog"], "probabilities": P}
    with pytest.raises(LabelError, match="names its top class \"dog\" but its 3 scores are "
                                         "unnamed: give --label_names or --label_names_file"):
        labels(prediction)
    assert labels(prediction, NAMES).labels == [("cat", 0.1), ("dog", 0.7), ("cow", 0.2)]
    with pytest.raises(LabelError, match="best score is class 'cat'"):
        labels(prediction, ("dog", "cat", "cow"))  # names in the wrong order


def test_tf_top_class_must_agree_with_the_scores():
    with pytest.raises(LabelError, match="top class id 0 is not the class with the best"):
        labels({"class_ids": [0], "classes": ["0"], "probabilities": P})
    with pytest.raises(LabelError, match="best score is class 'dog'"):
        labels({"classes": ["cow"], "probabilities": P, "all_classes": list(NAMES),
                "logits": P})


def test_top_class_index_beside_unnamed_scores():
    assert labels({"classes": 1, "probabilities": P}) == \
        LabelScores([("0", 0.1), ("1", 0.7), ("2", 0.2)], True)
    assert labels({"classes": 1, "probabilities": P}, NAMES).labels[1] == ("dog", 0.7)
    with pytest.raises(LabelError, match="best score is class"):
        labels({"label": 0, "scores": P})


def test_torchserve_label_map():
    assert labels({"tabby": 0.6, "tiger_cat": 0.3, "lynx": 0.1}).labels == \
        [("tabby", 0.6), ("tiger_cat", 0.3), ("lynx", 0.1)]
    assert labels({"281": 0.6, "282": 0.4}) == LabelScores([("281", 0.6), ("282", 0.4)], True)
    assert labels({"0": 0.6, "2": 0.4}, NAMES).labels == [("cat", 0.6), ("cow", 0.4)]
    with pytest.raises(LabelError, match="not a finite number"):
        labels({"tabby": float("inf")})


def test_vertex_classification():
    prediction = {"ids": ["9", "8"], "displayNames": ["rose", "tulip"], "confidences": [0.3, 0.7]}
    assert labels(prediction) == LabelScores([("rose", 0.3), ("tulip", 0.7)])


def test_bare_score_vectors_tf_serving_and_kserve_v1():
    assert labels(P) == LabelScores([("0", 0.1), ("1", 0.7), ("2", 0.2)], True)
    assert labels(P, NAMES) == LabelScores([("cat", 0.1), ("dog", 0.7), ("cow", 0.2)])
    assert labels({"scores": P}, NAMES).labels == labels(P, NAMES).labels
    with pytest.raises(LabelError, match="not a number"):
        labels([[0.1, 0.9]])


def test_labels_and_scores_pairs():
    assert labels({"labels": ["a", "b"], "scores": [0.8, 0.2], "key": "k"}).labels == \
        [("a", 0.8), ("b", 0.2)]
    assert labels({"classes": ["a", "b"], "probabilities": [0.1, 0.9]}).labels == \
        [("a", 0.1), ("b", 0.9)]
    assert labels({"classes": [2, 0], "scores": [0.9, 0.1]}, NAMES).labels == \
        [("cow", 0.9), ("cat", 0.1)]
    with pytest.raises(LabelError, match="2 labels but 3 scores"):
        labels({"labels": ["a", "b"], "scores": P})


def test_single_label_and_score():
    assert labels({"label": "dog", "score": 0.7}) == LabelScores([("dog", 0.7)])
    assert labels("cat") == LabelScores([("cat", 1.0)])
    assert labels(2, NAMES) == LabelScores([("cow", 1.0)])
    assert labels(7) == LabelScores([("7", 1.0)], True)
    assert labels(0.83, ("positive",)) == LabelScores([("positive", 0.83)])
    assert labels(0.83) == LabelScores([("value", 0.83)])


def test_triton_classification_strings():
    assert triton_class("0.75:281:tabby") == ("tabby", 0.75, False)
    assert triton_class("0.75:1", NAMES) == ("dog", 0.75, False)
    assert triton_class("0.75:1") == ("1", 0.75, True)
    assert triton_class("0.5:3:a:b") == ("a:b", 0.5, False)
    assert labels(["0.7:1:dog", "0.2:2:cow"]) == LabelScores([("dog", 0.7), ("cow", 0.2)])
    assert labels(["0.7:1", "0.2:2"], NAMES).labels == [("dog", 0.7), ("cow", 0.2)]
    with pytest.raises(LabelError, match="not a finite number"):
        triton_class("nan:1:dog")


def test_triton_label_is_checked_against_label_names():
    assert triton_class("0.75:1:dog", NAMES) == ("dog", 0.75, False)
    with pytest.raises(LabelError, match="class 1 'puppy' but --label_names"):
        triton_class("0.75:1:puppy", NAMES)
    with pytest.raises(LabelError, match="outside the 3 names"):
        triton_class("0.75:7:goat", NAMES)


def test_lists_of_records_and_pairs():
    assert labels([{"label": "tabby", "score": 0.6}, {"label": "lynx", "score": 0.4}]) == \
        LabelScores([("tabby", 0.6), ("lynx", 0.4)])
    assert labels([{"className": "n02123045 tabby", "probability": 0.4}]).labels == \
        [("n02123045 tabby", 0.4)]
    assert labels([["tabby", 0.6], ["lynx", 0.4]]).labels == [("tabby", 0.6), ("lynx", 0.4)]
    with pytest.raises(LabelError, match="--labels_field and --scores_field"):
        labels([{"label": "tabby"}])
    with pytest.raises(LabelError, match="list of 2 names without scores"):
        labels(["tabby", "lynx"])


def test_custom_shapes_by_field_paths():
    prediction = {"output": {"names": ["a", "b"], "probs": [0.4, 0.6]}, "top": [{"s": 0.9}]}
    assert labels(prediction, labels_field="output.names", scores_field="output.probs") \
        .labels == [("a", 0.4), ("b", 0.6)]
    assert labels(prediction, ("x", "y"), scores_field="output.probs").labels == \
        [("x", 0.4), ("y", 0.6)]
    assert labels(prediction, ("only",), scores_field="top.0.s").labels == [("only", 0.9)]
    assert labels({"m": {"a": 0.2, "b": 0.8}}, scores_field="m").labels == \
        [("a", 0.2), ("b", 0.8)]
    assert labels({"c": "b"}, labels_field="c").labels == [("b", 1.0)]
    with pytest.raises(LabelError, match="has no field 'output.scores'"):
        labels(prediction, scores_field="output.scores")
    with pytest.raises(LabelError, match="no scores"):
        labels(prediction, labels_field="output.names")


@pytest.mark.parametrize("prediction", [
    None, True, {"nothing": "here"}, {}, {"labels": ["a"], "scores": ["x"]}, [0.1, "x"],
    {"labels": ["a", "b"]}])
def test_unreadable_predictions_are_refused(prediction):
    with pytest.raises(LabelError):
        labels(prediction)


def test_field():
    assert value_at({"a": [{"b": 3}]}, "a.0.b") == 3
    for path in ("a.1.b", "a.x", "b"):
        with pytest.raises(LabelError):
            value_at({"a": [{"b": 3}]}, path)


def test_check_field_path():
    assert check_field_path("outputs.scores", "--scores_field") == "outputs.scores"
    assert check_field_path(None, "--scores_field") is None
    for bad in ("", "a..b", ".a", "a b"):
        with pytest.raises(ValueError, match="--scores_field"):
            check_field_path(bad, "--scores_field")


# -- names files and the warning -------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "cat\ndog\ncow\n", "cat\r\ndog\r\ncow", '["cat", "dog", "cow"]',
    '{"0": "cat", "1": "dog", "2": "cow"}',
    '{"1": ["n02", "dog"], "0": ["n01", "cat"], "2": ["n03", "cow"]}'])
def test_parse_label_names(text):
    assert parse_label_names(text, "f") == NAMES


@pytest.mark.parametrize("text, message", [
    ("", "names no labels"), ("cat\n\ndog", "label 1 is empty"),
    ("cat\ndog\ncat", "'cat' is named more than once"), ("[1, 2]", "JSON list of names"),
    ('{"1": "a"}', "map 0..N-1"), ("[oops", "not valid JSON")])
def test_bad_label_names_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        parse_label_names(text, "f")


def test_check_label_names():
    assert check_label_names(["a", "b"], "--label_names") == ("a", "b")
    with pytest.raises(ValueError, match="--label_names: label 1 is empty"):
        check_label_names(["a", ""], "--label_names")


def test_load_label_names_from_a_local_file(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(list(NAMES)), encoding="utf-8")
    assert load_label_names(str(path)) == NAMES
    with pytest.raises(ValueError, match="cannot read --label_names_file"):
        load_label_names(str(tmp_path / "missing.txt"))
    (tmp_path / "bin").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="not UTF-8"):
        load_label_names(str(tmp_path / "bin"))


def test_index_labels_warn_once_per_process(caplog):
    INDEX_WARNING.reset()
    with caplog.at_level(logging.WARNING, logger="batch_predict"):
        for _ in range(3):
            warn_if_indexed(labels(P))
        warn_if_indexed(labels(P, NAMES))
    assert [r.getMessage() for r in caplog.records if "class indices" in r.getMessage()] == \
        ["the model answers unnamed scores or class indices: labels are the class indices "
         "(0, 1, ...); give --label_names or --label_names_file to name them"]
