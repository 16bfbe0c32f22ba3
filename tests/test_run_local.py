"""`./run_local.sh`, the README's first command, run as a user runs it (the fast colour
model; the demo images in demo/images, made on the first run; output under the test's
folder)."""
import json
import os
import shutil

import pytest

from tests.helpers import labelled_images, ROOT, run_in_session

RUN_TIMEOUT_S = 300
DEMO_IMAGES = os.path.join(ROOT, "demo", "images")


def run_local(*args):
    return run_in_session(["bash", "run_local.sh", "--model", "colour", *args], RUN_TIMEOUT_S,
                          cwd=ROOT)


def demo_files() -> int:
    return sum(len(files) for _, _, files in os.walk(DEMO_IMAGES))


def test_the_demo_accounts_for_every_file_and_shows_the_photos(tmp_path):
    done = run_local("--output", str(tmp_path / "predictions"))
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["inputs"] == demo_files() >= 53 and summary["accounted"] is True
    assert summary["failed_by_stage"].get("decode", 0) >= 1  # corrupt.jpg
    assert "demo photos (localserver/photos/SOURCES.md)" in done.stderr
    assert "cat.jpg" in done.stderr and "local server: " in done.stderr
    assert "Traceback" not in done.stderr


def test_a_dry_run_prints_its_estimate_and_no_traceback(tmp_path):
    done = run_local("--output", str(tmp_path / "predictions"), "--dry_run")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["dry_run"] is True and summary["inputs"] == demo_files()
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "local server: " not in done.stderr  # no requests to report
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_config_of_your_own_runs_its_inputs(tmp_path):
    images = labelled_images(tmp_path / "mine", ["red", "blue"])
    config = tmp_path / "mine.yaml"
    config.write_text(f"input:\n  - {tmp_path / 'mine'}\noutput: {tmp_path / 'out' / 'pred'}\n")
    done = run_local("--config", str(config))
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["inputs"] == summary["predicted"] == len(images)
    assert summary["output"].startswith(str(tmp_path / "out" / "pred"))


def pipeline_reads_embeddings() -> bool:
    with open(os.path.join(ROOT, "pipeline", "options.py"), encoding="utf-8") as f:
        return "--embedding_field" in f.read()


def test_embeddings_print_each_photos_nearest_images_its_copies_first(tmp_path):
    """`--embeddings`: the server's EfficientNet-Lite0 vectors, read by the job, and each demo
    photo's nearest other images: its own re-encoded and resized copies."""
    if not pipeline_reads_embeddings():
        pytest.skip("the pipeline has no --embedding_field yet (issue 22)")
    done = run_in_session(["bash", "run_local.sh", "--embeddings", "--output",
                           str(tmp_path / "predictions")], RUN_TIMEOUT_S, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stderr.splitlines()
    start = lines.index("demo photos, nearest other images by cosine similarity of their "
                        "embeddings:")
    nearest = dict(line.split(maxsplit=1) for line in lines[start + 1:start + 5])
    assert sorted(nearest) == ["camera.jpg", "cat.jpg", "coffee.jpg", "rocket.jpg"]
    for photo, near in nearest.items():
        first = os.path.basename(near.split(",")[0].split()[0])
        assert first.startswith(photo.split(".")[0] + "_"), (photo, near)
    assert "Traceback" not in done.stderr
def run_local_from(folder, *args):
    """`run_local.sh` run from `folder`, as a user standing there runs it."""
    return run_in_session(["bash", os.path.join(ROOT, "run_local.sh"), *args], RUN_TIMEOUT_S,
                          cwd=str(folder))


def test_relative_paths_are_the_callers_and_their_labels_are_shown(tmp_path):
    images = labelled_images(tmp_path / "pics", ["red", "blue", "green"])
    done = run_local_from(tmp_path, "--model", "colour", "--input", "pics",
                          "--output", "mine/p")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["predicted"] == len(images)
    assert summary["output"].startswith(str(tmp_path / "mine" / "p-"))
    for path, label in images.items():  # the top label of each image
        assert any(os.path.basename(path) in line and label in line
                   for line in done.stderr.splitlines()), done.stderr
    # the server's routes, the v2 one included, with the model name it serves
    assert "/v2/models/local-color-classifier/infer" in done.stderr, done.stderr


def test_a_users_onnx_model_and_labels_by_relative_paths(tmp_path):
    shutil.copyfile(os.path.join(ROOT, "localserver", "models", "efficientnet_lite0.onnx"),
                    tmp_path / "my.onnx")
    shutil.copyfile(os.path.join(ROOT, "localserver", "models", "imagenet_labels.txt"),
                    tmp_path / "labels.txt")
    shutil.copytree(os.path.join(ROOT, "localserver", "photos"), tmp_path / "pics",
                    ignore=shutil.ignore_patterns("*.md"))
    done = run_local_from(tmp_path, "--model", "my.onnx", "--labels", "labels.txt",
                          "--input", "pics", "--output", "mine/p")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["predicted"] == 4
    assert any("coffee.jpg" in line and "espresso" in line for line in done.stderr.splitlines())


def test_a_missing_model_file_is_one_line(tmp_path):
    done = run_local_from(tmp_path, "--model", "my.onnx", "--labels", "labels.txt",
                          "--input", "pics", "--output", "mine/p")
    assert done.returncode != 0
    lines = [l for l in done.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, done.stderr
    assert f"{tmp_path / 'my.onnx'}: no such file" in lines[0]


def test_a_dry_run_starts_no_server(tmp_path):
    done = run_local("--output", str(tmp_path / "predictions"), "--dry_run")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "prediction server" not in done.stderr, done.stderr
