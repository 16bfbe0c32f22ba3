"""The pipeline prepares the tensors a raw model export takes: EfficientNet-Lite0's ONNX graph
behind real KServe and MLServer with no preprocessing of their own (tests/model_servers/
*_onnx_raw.py) answers, for every demo photo, what the local server answers after preparing
the image itself. The model's metadata completes the flags, and refuses one that contradicts
it before anything is sent."""
import logging
import os
import shutil

import pytest

from localserver import LocalServer
from localserver.classifiers import EFFICIENTNET_LITE0, MODELS_DIR
from localserver.demo import PHOTO_CLASSES, PHOTOS_DIR
from pipeline.options import ConfigError
from pipeline.run import run
from tests.helpers import (assert_accounted, read_dead_letters, read_predictions,
                           write_poison_jpeg)
from tests.servers import RAW_MODEL

LABELS_FILE = os.path.join(MODELS_DIR, "imagenet_labels.txt")
# EfficientNet-Lite's own preparation, as the local server makes it server-side.
LITE0_FLAGS = ("--instance_format", "tensor", "--resize", "crop", "--crop_fraction", "0.875",
               "--resample", "bicubic", "--tensor_layout", "NCHW", "--tensor_dtype", "FP32",
               "--mean", "127", "--std", "128")
SCORE_TOLERANCE = 0.01


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for name in PHOTO_CLASSES:
        shutil.copy(os.path.join(PHOTOS_DIR, name), folder / name)
    return folder


def job(folder, out, endpoint, *flags):
    summary = run(["--input", str(folder), "--endpoint", endpoint, "--output", str(out),
                   "--max_instances_per_request", "4", *flags])
    assert_accounted(summary)
    return summary, {os.path.basename(r["key"]): r for r in read_predictions(str(out))}


@pytest.fixture(scope="module")
def local_answers(photos, tmp_path_factory):
    """The local server's top label and score per photo: it prepares the images itself."""
    with LocalServer(model=EFFICIENTNET_LITE0) as server:
        _, rows = job(photos, tmp_path_factory.mktemp("local") / "pred",
                      server.endpoint("mlengine"))
    return {name: (row["top_label"], row["top_score"]) for name, row in rows.items()}


def raw_endpoint(server) -> str:
    return f"{server.url}/v2/models/{RAW_MODEL}/infer"


@pytest.mark.parametrize("server_name,wire", [("raw_kserve", ("--binary_data",)),
                                              ("raw_kserve", ()), ("raw_mlserver", ())])
def test_the_pipelines_tensors_get_the_local_servers_answers(
        request, tmp_path, photos, local_answers, server_name, wire):
    server = request.getfixturevalue(server_name)
    summary, rows = job(photos, tmp_path / "pred", raw_endpoint(server), "--protocol", "v2",
                        "--label_names_file", LABELS_FILE, "--max_request_bytes", "8000000",
                        *LITE0_FLAGS, *wire)
    assert summary["predicted"] == len(PHOTO_CLASSES) and summary["failed"] == 0
    for name, (label, score) in local_answers.items():
        assert rows[name]["top_label"] == label, name
        assert label in PHOTO_CLASSES[name]
        assert abs(rows[name]["top_score"] - score) <= SCORE_TOLERANCE, (name, score)


def test_the_metadata_fills_layout_size_and_datatype(tmp_path, photos, local_answers, raw_kserve):
    """Only the scaling and the crop are given: NCHW, 224x224 and FP32 come from the model."""
    summary, rows = job(photos, tmp_path / "pred", raw_endpoint(raw_kserve), "--protocol", "v2",
                        "--binary_data", "--label_names_file", LABELS_FILE,
                        "--instance_format", "tensor", "--resize", "crop", "--resample",
                        "bicubic", "--mean", "127", "--std", "128")
    assert summary["predicted"] == len(PHOTO_CLASSES)
    assert {n: r["top_label"] for n, r in rows.items()} == \
        {n: label for n, (label, _) in local_answers.items()}


@pytest.mark.parametrize("flags,message", [
    (("--tensor_layout", "NHWC"), "--tensor_layout NHWC contradicts model input image "
                                  r"\(FP32 \[-1, 3, 224, 224\]\), which takes NCHW"),
    (("--image_size", "300x300"), "--image_size 300x300 contradicts .* which takes 224x224"),
    (("--tensor_dtype", "UINT8"), "--tensor_dtype UINT8 contradicts .* which takes FP32")])
def test_a_flag_the_metadata_contradicts_is_refused_before_anything_is_sent(
        tmp_path, photos, raw_kserve, flags, message):
    with pytest.raises(ConfigError, match=message):
        job(photos, tmp_path / "pred", raw_endpoint(raw_kserve), "--protocol", "v2",
            "--instance_format", "tensor", "--mean", "127", "--std", "128", *flags)
    assert not os.path.exists(tmp_path / "pred-errors")


def test_float_tensors_without_a_scaling_give_one_warning(tmp_path, photos, raw_kserve, caplog):
    with caplog.at_level(logging.WARNING, logger="batch_predict"):
        job(photos, tmp_path / "pred", raw_endpoint(raw_kserve), "--protocol", "v2",
            "--binary_data", "--instance_format", "tensor", "--limit", "1")
    warnings = [r.getMessage() for r in caplog.records if "scaling" in r.getMessage()]
    assert len(warnings) == 1
    assert "FP32" in warnings[0] and "--normalize none|unit|inception|imagenet|caffe" in \
        warnings[0]


def test_a_truncated_jpeg_among_the_photos_fails_alone(tmp_path, raw_kserve):
    folder = tmp_path / "images"
    shutil.copytree(PHOTOS_DIR, folder, ignore=shutil.ignore_patterns("*.md"))
    bad = write_poison_jpeg(folder)
    summary, rows = job(folder, tmp_path / "pred", raw_endpoint(raw_kserve), "--protocol", "v2",
                        "--binary_data", "--label_names_file", LABELS_FILE, *LITE0_FLAGS)
    letters = read_dead_letters(str(tmp_path / "pred-errors"))
    assert [(d["key"], d["stage"]) for d in letters] == [(bad, "decode")]
    assert set(rows) == set(PHOTO_CLASSES)
    assert all(rows[n]["top_label"] in PHOTO_CLASSES[n] for n in rows)
