"""`./run_local.sh`, the README's first command, run as a user runs it (the fast colour
model; the demo images in demo/images, made on the first run; output under the test's
folder)."""
import json
import os

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
