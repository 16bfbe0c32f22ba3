"""Embeddings from real model servers: EfficientNet-Lite0's ONNX graph behind real KServe and
MLServer (tests/model_servers/*_onnx_raw.py, from the tests' server virtualenvs) answering its
`embedding` output beside its scores, fed the pipeline's own tensors. Every vector written, in
Parquet and JSONL, equals onnxruntime's `embedding` for the tensor the pipeline prepared (to
1e-6); the vector output is found in the model's metadata; a bad image fails alone."""
import os
import shutil

import numpy as np
import onnxruntime
import pytest

from imaging.tensor import image_tensor
from localserver.classifiers import MODELS_DIR
from localserver.demo import PHOTO_CLASSES, PHOTOS_DIR
from pipeline.config import build_config
from pipeline.options import parse_options
from pipeline.preflight import preflight
from pipeline.run import run
from tests.helpers import (assert_accounted, read_dead_letters, read_predictions,
                           write_poison_jpeg)
from tests.servers import kserve_onnx_raw_server, mlserver_onnx_raw_server, RAW_MODEL

TOLERANCE = 1e-6
LITE0_FLAGS = ("--protocol", "v2", "--instance_format", "tensor", "--resize", "crop",
               "--crop_fraction", "0.875", "--resample", "bicubic", "--tensor_layout", "NCHW",
               "--tensor_dtype", "FP32", "--mean", "127", "--std", "128")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for name in PHOTO_CLASSES:
        shutil.copy(os.path.join(PHOTOS_DIR, name), folder / name)
    write_poison_jpeg(folder)
    return folder


@pytest.fixture(scope="module")
def session():
    return onnxruntime.InferenceSession(os.path.join(MODELS_DIR, "efficientnet_lite0.onnx"),
                                        providers=["CPUExecutionProvider"])


def expected_vectors(session, folder, endpoint, flags):
    """onnxruntime's `embedding` for the tensor the pipeline prepares from each photo (the
    tensor spec completed from the model's metadata, as the job's start-up completes it)."""
    config = preflight(build_config(parse_options(
        ["--input", str(folder), "--endpoint", endpoint, "--output", "unused", *flags])))
    assert config.protocol.embedding.field == "embedding"
    assert config.protocol.embedding.dimension == 1280
    vectors = {}
    for name in PHOTO_CLASSES:
        with open(folder / name, "rb") as f:
            tensor = image_tensor(f.read(), config.protocol.tensor)
        vectors[str(folder / name)] = session.run(["embedding"],
                                                  {"image": tensor[np.newaxis]})[0][0]
    return vectors


def check_run(tmp_path, session, folder, endpoint, *extra):
    flags = (*LITE0_FLAGS, *extra)
    expected = expected_vectors(session, folder, endpoint, flags)
    out = tmp_path / "out" / "pred"
    summary = run(["--input", str(folder), "--endpoint", endpoint, "--output", str(out),
                   "--output_format", "both", "--max_instances_per_request", "2", *flags])
    assert_accounted(summary)
    assert summary["predicted"] == len(PHOTO_CLASSES) and summary["failed"] == 1
    (dead,) = read_dead_letters(f"{out}-errors")
    assert dead["key"].endswith("poison.jpg")
    for fmt in ("parquet", "jsonl"):
        rows = {r["key"]: r for r in read_predictions(str(out), fmt)}
        assert set(rows) == set(expected), fmt
        for key, row in rows.items():
            np.testing.assert_allclose(np.asarray(row["embedding"], np.float64), expected[key],
                                       atol=TOLERANCE, rtol=0, err_msg=f"{fmt} {key}")
            assert len(row["labels"]) == 1000 and row["top_label"] is not None


@pytest.mark.parametrize("binary", [False, True])
def test_kserve_vectors_equal_onnxruntimes(tmp_path, session, photos, binary):
    with kserve_onnx_raw_server(embeddings=True) as server:
        check_run(tmp_path, session, photos, f"{server.url}/v2/models/{RAW_MODEL}/infer",
                  *(["--binary_data"] if binary else []))


def test_mlserver_vectors_equal_onnxruntimes(tmp_path, session, photos):
    with mlserver_onnx_raw_server(str(tmp_path / "mlserver"), embeddings=True) as server:
        check_run(tmp_path, session, photos, f"{server.url}/v2/models/{RAW_MODEL}/infer")
