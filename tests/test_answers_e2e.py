"""Real model answer shapes end to end: a small HTTP server in the test answers each shape the
servers' docs show (TF canned estimators, TorchServe maps, Vertex, TF Serving / KServe v1
score vectors, Triton classification strings, `{label, score}` records, ...), and the job
reads each right, or refuses it as a `parse` dead letter naming the flag that resolves it.

The server sees `--instance_format named` instances, so it answers each image (named
`<shape>__<class>_<n>.png`) in the shape its name asks for, several shapes per request.
"""
import base64
import glob
import http.server
import json
import logging
import math
import os

import pyarrow.parquet as pq
import pytest

from localserver.demo import write_image
from pipeline.run import run
from protocols.labels import INDEX_WARNING
from tests.helpers import assert_accounted, read_dead_letters, read_predictions, reply, serving

CLASSES = ("cat", "dog", "cow")


def probabilities(true_class):
    """A score vector over CLASSES whose best class is `true_class`."""
    return [0.7 if c == true_class else 0.15 for c in CLASSES]


def answer(shape, true_class):
    """The prediction a server of this shape gives for an image of `true_class`."""
    p = probabilities(true_class)
    i = CLASSES.index(true_class)
    ids = list(range(len(CLASSES)))
    shapes = {
        # TF canned estimator, no label vocabulary (ML Engine / TF Serving)
        "tfcanned": {"class_ids": [i], "classes": [str(i)], "probabilities": p,
                     "logits": [math.log(x) for x in p], "all_class_ids": ids,
                     "all_classes": [str(c) for c in ids]},
        # TF canned estimator with a label vocabulary
        "tfvocab": {"class_ids": [i], "classes": [true_class], "probabilities": p,
                    "logits": [math.log(x) for x in p], "all_class_ids": ids,
                    "all_classes": list(CLASSES)},
        # TF canned estimator with a vocabulary, older form: no all_classes
        "tftop": {"class_ids": [i], "classes": [true_class], "probabilities": p},
        "torchserve": dict(zip(CLASSES, p)),
        "torchindex": {str(k): v for k, v in zip(ids, p)},
        "vertex": {"ids": ["11", "12", "13"], "displayNames": list(CLASSES), "confidences": p},
        "vector": p,
        "labelsscores": {"labels": list(CLASSES), "scores": p},
        "triton": [f"{s}:{k}:{c}" for s, k, c in zip(p, ids, CLASSES)],
        "tritonindex": [f"{s}:{k}" for s, k in zip(p, ids)],
        "records": [{"label": c, "score": s} for c, s in zip(CLASSES, p)],
        "djl": [{"className": c, "probability": s} for c, s in zip(CLASSES, p)],
        "classindex": i,
        "custom": {"output": {"names": list(CLASSES), "probs": p}},
        "nan": {"labels": list(CLASSES), "scores": [float("nan"), 0.5, 0.5]},
        "nanstring": {"labels": list(CLASSES), "scores": ["NaN", 0.5, 0.5]},
        "infinity": {c: (float("inf") if c == true_class else 0.1) for c in CLASSES},
        "nanlogits": {"labels": list(CLASSES), "scores": p, "logits": [float("nan")] * 3},
        # a lone surrogate (JSON's "\ud800", no character): in a label, and beside the labels
        "surrogatelabel": {"labels": [c + "\ud800" for c in CLASSES], "scores": p},
        "surrogatenote": {"labels": list(CLASSES), "scores": p, "note": "\ud800"},
        # an int too large for a float as a score, and a prediction nested 900 deep
        "bigscore": {"labels": list(CLASSES), "scores": [10 ** 400, 0.1, 0.1]},
        "deep": {"labels": list(CLASSES), "scores": p, "x": nested(900)},
    }
    return shapes[shape]


def nested(depth):
    value = []
    for _ in range(depth - 1):
        value = [value]
    return value


class ShapeHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests += 1
        predictions = []
        for instance in body["instances"]:
            base64.b64decode(instance["image"]["b64"], validate=True)
            shape, true_class = os.path.basename(instance["key"]).rsplit("_", 1)[0].split("__")
            predictions.append(answer(shape, true_class))
        reply(self, 200, json.dumps({"predictions": predictions}).encode(),  # NaN as Python
              Content_Type="application/json")                               # writes it

    def log_message(self, *args):
        pass


@pytest.fixture
def shape_server():
    with serving(ShapeHandler) as server:
        server.requests = 0
        yield server


def images(folder, shapes, classes=CLASSES):
    """One image per (shape, class); returns {path: (shape, class)}."""
    made = {}
    for shape in shapes:
        for n, true_class in enumerate(classes):
            path = os.path.join(str(folder), f"{shape}__{true_class}_{n}.png")
            write_image(path, "red", seed=n, size=(8, 8))
            made[path] = (shape, true_class)
    return made


def job(tmp_path, server, *extra, fmt="both"):
    endpoint = f"http://127.0.0.1:{server.server_address[1]}/v1/models/m:predict"
    return run(["--input", str(tmp_path / "images"), "--endpoint", endpoint,
                "--instance_format", "named", "--output", str(tmp_path / "out" / "p"),
                "--output_format", fmt, "--max_instances_per_request", "8", *extra])


def strict_lines(pattern):
    """Every line of the JSONL files matching `pattern`, parsed as strict JSON (NaN and
    Infinity refused)."""
    rows = []
    for path in sorted(glob.glob(pattern)):
        with open(path, encoding="utf-8") as f:
            for line in f:
                rows.append(json.loads(line, parse_constant=refuse_constant))
    return rows


def refuse_constant(name):
    raise AssertionError(f"not JSON: {name}")


NAMED_SHAPES = ("tfcanned", "tfvocab", "tftop", "torchserve", "torchindex", "vertex",
                "vector", "labelsscores", "triton", "tritonindex", "records", "djl",
                "classindex")


def test_every_real_shape_is_read_right_with_label_names(tmp_path, shape_server):
    made = images(tmp_path / "images", NAMED_SHAPES)
    summary = job(tmp_path, shape_server, "--label_names", ",".join(CLASSES))
    assert_accounted(summary)
    assert read_dead_letters(summary["errors"]) == []
    for fmt in ("parquet", "jsonl"):
        rows = {r["key"]: r for r in read_predictions(str(tmp_path / "out" / "p"), fmt)}
        assert {k: r["top_label"] for k, r in rows.items()} == \
            {k: c for k, (_, c) in made.items()}, fmt
        for key, row in rows.items():
            shape, true_class = made[key]
            assert json.loads(row["prediction"]) == answer(shape, true_class), (fmt, key)
            assert row["top_score"] == (1.0 if shape == "classindex" else 0.7)
            if shape != "classindex":
                assert sorted(l["label"] for l in row["labels"]) == sorted(CLASSES), key
    strict_lines(f"{tmp_path}/out/p-*.jsonl")


def test_without_label_names_nothing_is_mislabelled(tmp_path, shape_server, caplog):
    made = images(tmp_path / "images", ("tfcanned", "tfvocab", "tftop", "torchserve",
                                        "vector", "tritonindex", "classindex", "custom"))
    INDEX_WARNING.reset()
    with caplog.at_level(logging.WARNING, logger="batch_predict"):
        summary = job(tmp_path, shape_server)
    assert_accounted(summary)
    rows = {r["key"]: r for r in read_predictions(str(tmp_path / "out" / "p"))}
    letters = {d["key"]: d for d in read_dead_letters(summary["errors"])}
    for key, (shape, true_class) in made.items():
        index = str(CLASSES.index(true_class))
        if shape in ("tfvocab", "torchserve"):  # the model names every class
            assert rows[key]["top_label"] == true_class, key
        elif shape == "tftop":  # a named top class beside unnamed scores: refused
            assert letters[key]["stage"] == "parse", key
            assert "--label_names or --label_names_file" in letters[key]["error"]
            assert true_class in letters[key]["error"]
        elif shape == "custom":  # a shape of its own: refused, naming the field flags
            assert letters[key]["stage"] == "parse", key
            assert "--labels_field and --scores_field" in letters[key]["error"]
        else:  # the model gives class indices only: labels are the indices
            assert rows[key]["top_label"] == index, key
    assert len(letters) == 6 and summary["failed_by_stage"] == {"parse": 6}
    assert summary["splits"] == 0  # a refused prediction never costs its neighbours a request
    warnings = [r for r in caplog.records if "labels are the class indices" in r.getMessage()]
    assert len(warnings) == 1


def test_non_finite_scores_never_reach_an_output(tmp_path, shape_server):
    made = images(tmp_path / "images", ("nan", "nanstring", "infinity", "nanlogits",
                                        "labelsscores"))
    summary = job(tmp_path, shape_server)
    assert_accounted(summary)
    rows = strict_lines(f"{tmp_path}/out/p-2*.jsonl")
    assert sorted(r["key"] for r in rows) == \
        sorted(k for k, (shape, _) in made.items() if shape == "labelsscores")
    letters = strict_lines(f"{summary['errors']}-*.jsonl")
    assert sorted(d["key"] for d in letters) == \
        sorted(k for k, (shape, _) in made.items() if shape != "labelsscores")
    assert {d["stage"] for d in letters} == {"parse"}
    assert all("finite" in d["error"] for d in letters), letters
    for path in glob.glob(f"{tmp_path}/out/p-*.parquet"):
        for row in pq.read_table(path).to_pylist():
            assert all(math.isfinite(l["score"]) for l in row["labels"])
    assert summary["splits"] == 0


def test_text_that_is_no_unicode_never_crashes_the_job(tmp_path, shape_server):
    """A lone surrogate (`"\ud800"` is valid JSON but no character, and no UTF-8 writer takes
    it): as a label, the prediction is refused; elsewhere in the prediction, the column keeps
    it escaped. Either way the job writes its outputs and ends."""
    made = images(tmp_path / "images", ("surrogatelabel", "surrogatenote", "labelsscores"))
    summary = job(tmp_path, shape_server)
    assert_accounted(summary)
    rows = {r["key"]: r for r in strict_lines(f"{tmp_path}/out/p-2*.jsonl")}
    assert sorted(rows) == sorted(k for k, (shape, _) in made.items() if shape != "surrogatelabel")
    for key, row in rows.items():
        assert row["top_label"] == made[key][1]
        if made[key][0] == "surrogatenote":
            assert row["prediction"].isascii()
            assert json.loads(row["prediction"])["note"] == "\ud800"
    letters = strict_lines(f"{summary['errors']}-*.jsonl")
    assert sorted(d["key"] for d in letters) == \
        sorted(k for k, (shape, _) in made.items() if shape == "surrogatelabel")
    assert all(d["stage"] == "parse" and "Unicode" in d["error"] for d in letters), letters
    assert len(read_predictions(str(tmp_path / "out" / "p"))) == len(rows)


def test_answers_no_reader_can_take_are_dead_letters_not_a_failed_job(tmp_path, shape_server):
    """A score Python cannot make a float (10**400, an int) and a prediction nested 900
    deep (past what the readers recurse through) used to raise out of Predict and fail the
    whole job; each is now a `parse` dead letter of its image."""
    made = images(tmp_path / "images", ("bigscore", "deep", "labelsscores"))
    summary = job(tmp_path, shape_server)
    assert_accounted(summary)
    rows = strict_lines(f"{tmp_path}/out/p-2*.jsonl")
    assert sorted(r["key"] for r in rows) == \
        sorted(k for k, (shape, _) in made.items() if shape == "labelsscores")
    letters = {d["key"]: d for d in strict_lines(f"{summary['errors']}-*.jsonl")}
    assert sorted(letters) == sorted(k for k, (shape, _) in made.items()
                                     if shape != "labelsscores")
    for key, letter in letters.items():
        assert letter["stage"] == "parse", letter
        assert ("too large" if made[key][0] == "bigscore" else "nested too deeply") in \
            letter["error"], letter


def test_custom_shape_by_field_paths_and_prediction_column_left_out(tmp_path, shape_server):
    made = images(tmp_path / "images", ("custom",))
    summary = job(tmp_path, shape_server, "--labels_field", "output.names",
                  "--scores_field", "output.probs", "--no_prediction_column")
    assert_accounted(summary)
    assert summary["predicted"] == len(made)
    jsonl = strict_lines(f"{tmp_path}/out/p-2*.jsonl")
    assert {r["key"]: r["top_label"] for r in jsonl} == {k: c for k, (_, c) in made.items()}
    assert all("prediction" not in r for r in jsonl)
    parquet = read_predictions(str(tmp_path / "out" / "p"))
    assert [r["prediction"] for r in parquet] == [None] * len(made)


@pytest.mark.parametrize("protocol", ["mlengine", "vertex", "automl"])
def test_local_server_prediction_column_holds_its_answer(tmp_path, server, protocol):
    folder = tmp_path / "images"
    for i, label in enumerate(("red", "green", "blue")):
        write_image(str(folder / f"{label}.png"), label, seed=i)
    summary = run(["--input", str(folder), "--endpoint", server.endpoint(protocol),
                   "--protocol", protocol, "--output", str(tmp_path / "out" / "p"),
                   "--output_format", "both"])
    assert summary["predicted"] == 3
    with open(f"{tmp_path}/out/p.schema.json", encoding="utf-8") as f:
        assert {"name": "prediction", "type": "STRING", "mode": "NULLABLE"} in json.load(f)
    assert "prediction" in pq.read_schema(glob.glob(f"{tmp_path}/out/p-*.parquet")[0]).names
    for fmt in ("parquet", "jsonl"):
        for row in read_predictions(str(tmp_path / "out" / "p"), fmt):
            said = json.loads(row["prediction"])
            if protocol == "automl":
                pairs = {(i["displayName"], i["classification"]["score"]) for i in said}
            elif protocol == "vertex":
                pairs = set(zip(said["displayNames"], said["confidences"]))
            else:
                pairs = set(zip(said["labels"], said["scores"]))
            assert pairs == {(l["label"], l["score"]) for l in row["labels"]}, fmt
