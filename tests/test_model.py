"""EfficientNet-Lite0 (ONNX, onnxruntime on the CPU) on real photos, alone and behind the
local server on every protocol, and a user's own ONNX model given by path."""
import base64
import json
import os
import shutil
import subprocess
import sys
import urllib.request

import pytest
from PIL import Image

from localserver import LocalServer
from localserver.classifiers import (BadImage, EFFICIENTNET_LITE0, load_classifier, MODELS_DIR,
                                     Preprocessing, read_labels, to_tensor)
from localserver.demo import copy_photos, PHOTO_CLASSES, PHOTOS_DIR
from pipeline.run import run
from tests.helpers import assert_accounted, read_dead_letters, read_predictions

ONNX_PATH = os.path.join(MODELS_DIR, "efficientnet_lite0.onnx")
LABELS_PATH = os.path.join(MODELS_DIR, "imagenet_labels.txt")


def photo_bytes(name):
    with open(os.path.join(PHOTOS_DIR, name), "rb") as f:
        return f.read()


def right(name, ranked):
    """Whether one of the photo's true classes is in the top 5."""
    return bool(set(PHOTO_CLASSES[name]) & {label for label, _ in ranked[:5]})


@pytest.fixture(scope="module")
def lite0():
    return load_classifier(EFFICIENTNET_LITE0)


@pytest.fixture(scope="module")
def lite0_server():
    with LocalServer(model=EFFICIENTNET_LITE0) as server:
        yield server


def post(url, body):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_labels_are_the_thousand_imagenet_classes_in_order():
    labels = read_labels(LABELS_PATH)
    assert len(labels) == len(set(labels)) == 1000
    assert (labels[0], labels[281], labels[285], labels[999]) == \
        ("tench", "tabby cat", "Egyptian Mau", "toilet paper")


@pytest.mark.parametrize("name", sorted(PHOTO_CLASSES))
def test_each_photo_has_its_true_class_in_the_top_5(lite0, name):
    ranked = lite0.predict([photo_bytes(name)])[0]
    assert right(name, ranked), ranked
    assert len(ranked) == 5 and 0 < ranked[0][1] <= 1
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)


def test_preprocessing_crops_the_centre_and_scales_pixels_as_lite0_was_trained():
    img = Image.new("RGB", (400, 256), (0, 0, 0))
    img.paste((255, 255, 255), (72, 0, 328, 256))  # the centre 256 x 256 square is white
    tensor = to_tensor([img], Preprocessing())
    assert tensor.shape == (1, 3, 224, 224)
    assert float(tensor.min()) == float(tensor.max()) == (255 - 127) / 128
    white = Image.new("RGB", (100, 60), (255, 255, 255))
    nhwc = to_tensor([white], Preprocessing(height=32, width=48, layout="nhwc", crop_fraction=1,
                                            mean=(0, 0, 0), std=(255, 255, 255)))
    assert nhwc.shape == (1, 32, 48, 3) and float(nhwc.min()) == float(nhwc.max()) == 1.0


def test_a_batch_gives_the_answers_of_single_images(lite0):
    names = sorted(PHOTO_CLASSES)
    batch = lite0.predict([photo_bytes(n) for n in names])
    for name, together in zip(names, batch):
        alone = lite0.predict([photo_bytes(name)])[0]
        assert [l for l, _ in together] == [l for l, _ in alone]
        assert [s for _, s in together] == pytest.approx([s for _, s in alone], abs=1e-5)


def test_a_bad_image_is_named_by_its_index(lite0):
    with pytest.raises(BadImage) as caught:
        lite0.predict([photo_bytes("cat.jpg"), b"not an image", photo_bytes("coffee.jpg")])
    assert caught.value.index == 1 and "not a recognised image format" in caught.value.reason


def test_greyscale_and_transparent_images_are_classified(lite0):
    grey = Image.open(os.path.join(PHOTOS_DIR, "camera.jpg")).convert("L")
    rgba = Image.open(os.path.join(PHOTOS_DIR, "cat.jpg")).convert("RGBA")
    ranked_grey, ranked_rgba = lite0.classify([grey, rgba])
    assert right("camera.jpg", ranked_grey) and right("cat.jpg", ranked_rgba)


def test_server_answers_every_protocol_with_imagenet_labels(lite0_server):
    cat = base64.b64encode(photo_bytes("cat.jpg")).decode()
    coffee = base64.b64encode(photo_bytes("coffee.jpg")).decode()
    status, body = post(lite0_server.endpoint("mlengine"),
                        {"instances": [{"b64": cat}, {"key": "c", "image": {"b64": coffee}}]})
    assert status == 200
    assert right("cat.jpg", list(zip(body["predictions"][0]["labels"],
                                     body["predictions"][0]["scores"])))
    assert body["predictions"][1]["key"] == "c"
    assert body["predictions"][1]["labels"][0] == "espresso"
    status, body = post(lite0_server.endpoint("vertex"), {"instances": [{"content": coffee}]})
    assert status == 200 and body["predictions"][0]["displayNames"][0] == "espresso"
    assert body["predictions"][0]["ids"][0] == "967"  # espresso's ImageNet class index
    assert body["modelDisplayName"] == EFFICIENTNET_LITE0
    status, body = post(lite0_server.endpoint("automl"),
                        {"payload": {"image": {"imageBytes": coffee}}})
    assert status == 200 and body["payload"][0]["displayName"] == "espresso"


def test_server_takes_an_rgb_tensor(lite0_server):
    cat = Image.open(os.path.join(PHOTOS_DIR, "cat.jpg")).resize((224, 149))
    rows = [[list(cat.getpixel((x, y))) for x in range(cat.width)] for y in range(cat.height)]
    status, body = post(lite0_server.endpoint("mlengine"), {"instances": [rows]})
    assert status == 200
    prediction = body["predictions"][0]
    assert right("cat.jpg", list(zip(prediction["labels"], prediction["scores"])))


def test_server_fails_a_request_with_a_bad_image_naming_it(lite0_server):
    cat = base64.b64encode(photo_bytes("cat.jpg")).decode()
    bad = base64.b64encode(b"not an image").decode()
    status, body = post(lite0_server.endpoint("mlengine"),
                        {"instances": [{"b64": cat}, {"b64": bad}]})
    assert status == 400 and body["error"].startswith("Prediction failed: instance 1:")


def demo_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    copy_photos(str(folder))
    (folder / "corrupt.jpg").write_bytes(b"this is not a JPEG")
    truncated = photo_bytes("rocket.jpg")
    (folder / "truncated.jpg").write_bytes(truncated[:len(truncated) // 2])
    return folder


@pytest.mark.parametrize("protocol,extra", [("mlengine", ()), ("vertex", ()),
                                            ("automl", ("--score_threshold", "0")),
                                            ("mlengine", ("--instance_format", "named"))])
def test_pipeline_labels_the_photos_and_a_bad_image_fails_alone(
        tmp_path, lite0_server, protocol, extra):
    folder = demo_folder(tmp_path)
    summary = run(["--input", str(folder), "--endpoint", lite0_server.endpoint(protocol),
                   "--protocol", protocol, *extra, "--max_instances_per_request", "8",
                   "--output", str(tmp_path / "out" / "pred")])
    rows = {os.path.basename(r["key"]): r for r in read_predictions(str(tmp_path / "out/pred"))}
    assert sorted(rows) == sorted(PHOTO_CLASSES)
    for name, row in rows.items():
        assert right(name, [(l["label"], l["score"]) for l in row["labels"]]), row
    letters = {os.path.basename(d["key"]): d["stage"]
               for d in read_dead_letters(str(tmp_path / "out" / "pred-errors"))}
    assert letters == {"corrupt.jpg": "decode", "truncated.jpg": "predict"}
    assert_accounted(summary)


def test_a_users_own_onnx_model_by_path_with_its_labels(tmp_path):
    model = tmp_path / "mine.onnx"
    shutil.copyfile(ONNX_PATH, model)
    labels = tmp_path / "labels.txt"
    labels.write_text("# my classes\n" + "\n".join(read_labels(LABELS_PATH)) + "\n")
    with LocalServer(model=str(model), labels=str(labels), input_size="224x224",
                     mean="127", std="128", top_k=3) as server:
        status, body = post(server.endpoint("vertex"), {"instances": [
            {"content": base64.b64encode(photo_bytes("coffee.jpg")).decode()}]})
    assert status == 200 and body["modelDisplayName"] == "mine"
    assert body["predictions"][0]["displayNames"][0] == "espresso"
    assert len(body["predictions"][0]["displayNames"]) == 3


@pytest.mark.parametrize("flags,message", [
    (["--model", "nothing.onnx"], "--model nothing.onnx: no such file"),
    (["--model", "nothing"], "expected colour, efficientnet_lite0 or an .onnx file"),
    (["--no_such_flag", "1"], "unrecognized arguments: --no_such_flag"),
    (["--model", ONNX_PATH], "--labels FILE is needed"),
    (["--model", EFFICIENTNET_LITE0, "--input_size", "big"], "expected N or HxW"),
    (["--model", EFFICIENTNET_LITE0, "--mean", "1,2"], "one or three"),
])
def test_bad_model_flags_are_one_line_and_exit_2(flags, message):
    done = subprocess.run([sys.executable, "-m", "localserver", *flags], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 2 and message in done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr  # no usage dump before it


def test_a_labels_file_that_does_not_match_the_model_is_refused(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    done = subprocess.run([sys.executable, "-m", "localserver", "--model", ONNX_PATH,
                           "--labels", str(labels)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2 and "has 1000 classes but 2 labels" in done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
