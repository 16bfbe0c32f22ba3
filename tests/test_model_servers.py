"""The pipeline against real model servers from PyPI, each in its own cached virtualenv
(tests/servers.py): KServe's ModelServer and MLServer, serving the colour classifier
(tests/model_servers/). Bad images make the server fail the whole request; the pipeline
isolates them."""
import json

import pytest

from localserver.demo import LABEL_COLOURS
from pipeline.options import ConfigError
from pipeline.run import run
from tests.helpers import (assert_accounted, labelled_images, read_dead_letters, read_predictions,
                           write_poison_jpeg)
from tests.servers import kserve_server, mlserver_server

LABELS = list(LABEL_COLOURS) * 2


@pytest.fixture(scope="module")
def kserve():
    with kserve_server() as server:
        yield server


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory):
    with mlserver_server(str(tmp_path_factory.mktemp("mlserver"))) as server:
        yield server


def predict(tmp_path, endpoint, *flags):
    """Run the job on tmp_path/images; (summary, {key: top label}, [(key, stage, status)])."""
    summary = run(["--input", str(tmp_path / "images"), "--endpoint", endpoint,
                   "--output", str(tmp_path / "out" / "pred"),
                   "--max_instances_per_request", "8", *flags])
    rows = read_predictions(str(tmp_path / "out" / "pred"))
    letters = read_dead_letters(str(tmp_path / "out" / "pred-errors"))
    assert_accounted(summary)
    return (summary, {r["key"]: r["top_label"] for r in rows},
            [(d["key"], d["stage"], d["http_status"], d["error"]) for d in letters])


def test_kserve_v2_json_isolates_the_bad_image(tmp_path, kserve):
    truth = labelled_images(tmp_path / "images", LABELS)
    bad = write_poison_jpeg(tmp_path / "images")
    summary, labels, letters = predict(tmp_path, kserve.url + "/v2/models/colour/infer",
                                       "--protocol", "v2")
    assert labels == truth
    assert [letter[:3] for letter in letters] == [(bad, "predict", 400)]
    assert "cannot classify an image" in letters[0][3]
    assert summary["splits"] >= 1


def test_kserve_v2_binary_pixel_tensor_and_binary_outputs(tmp_path, kserve):
    truth = labelled_images(tmp_path / "images", LABELS)
    summary, labels, letters = predict(
        tmp_path, kserve.url + "/v2/models/colour-pixels/infer", "--protocol", "v2",
        "--binary_data", "--instance_format", "tensor", "--image_size", "8x8")
    assert labels == truth and letters == []
    assert summary["requests"] == 2


def test_kserve_v1_instances_isolates_the_bad_image(tmp_path, kserve):
    truth = labelled_images(tmp_path / "images", LABELS)
    bad = write_poison_jpeg(tmp_path / "images")
    summary, labels, letters = predict(tmp_path, kserve.url + "/v1/models/colour:predict",
                                       "--protocol", "mlengine")
    assert labels == truth
    assert [letter[:3] for letter in letters] == [(bad, "predict", 400)]


def test_kserve_unknown_model_stops_before_the_job(tmp_path, kserve):
    labelled_images(tmp_path / "images", LABELS[:1])
    with pytest.raises(ConfigError, match="model nope is not ready: .* HTTP 404"):
        predict(tmp_path, kserve.url + "/v2/models/nope/infer", "--protocol", "v2")


def test_mlserver_v2_json_isolates_the_bad_image(tmp_path, mlserver):
    truth = labelled_images(tmp_path / "images", LABELS)
    bad = write_poison_jpeg(tmp_path / "images")
    summary, labels, letters = predict(tmp_path, mlserver.url + "/v2/models/colour/infer",
                                       "--protocol", "v2")
    assert labels == truth
    assert [letter[:3] for letter in letters] == [(bad, "predict", 400)]
    assert "cannot classify an image" in letters[0][3]


def test_kserve_v2_output_fields_and_prediction_column(tmp_path, kserve):
    truth = labelled_images(tmp_path / "images", LABELS[:8])
    summary, labels, letters = predict(tmp_path, kserve.url + "/v2/models/colour/infer",
                                       "--protocol", "v2", "--labels_field", "labels",
                                       "--scores_field", "scores")
    assert labels == truth and letters == []
    for row in read_predictions(str(tmp_path / "out" / "pred")):
        said = json.loads(row["prediction"])
        assert list(said) == ["labels", "scores"] and said["labels"][0] == row["top_label"]
        assert [l["label"] for l in row["labels"]] == said["labels"]
