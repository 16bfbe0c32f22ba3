"""`./run_local.sh`, the README's first command, run as a user runs it (the fast colour
model; its own demo images; output under the test's folder)."""
import json
import subprocess

from tests.helpers import ROOT, labelled_images

RUN_TIMEOUT_S = 300


def run_local(tmp_path, *args):
    return subprocess.run(["bash", "run_local.sh", "--model", "colour",
                           "--output", str(tmp_path / "predictions"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


def test_the_demo_accounts_for_every_file_and_shows_the_photos(tmp_path):
    done = run_local(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert (summary["inputs"], summary["predicted"], summary["failed"], summary["skipped"]) \
        == (53, 52, 1, 0)
    assert summary["failed_by_stage"] == {"decode": 1} and summary["accounted"] is True
    assert "demo photos (localserver/photos/SOURCES.md)" in done.stderr
    assert "cat.jpg" in done.stderr and "local server: 7 requests" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_dry_run_prints_its_estimate_and_no_traceback(tmp_path):
    done = run_local(tmp_path, "--dry_run")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["dry_run"] is True and summary["inputs"] == 53
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_config_of_your_own_runs_its_inputs_without_the_demo_set(tmp_path):
    images = labelled_images(tmp_path / "mine", ["red", "blue"])
    config = tmp_path / "mine.yaml"
    config.write_text(f"input:\n  - {tmp_path / 'mine'}\noutput: {tmp_path / 'out' / 'pred'}\n")
    done = subprocess.run(["bash", "run_local.sh", "--model", "colour", "--config", str(config)],
                          cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["predicted"] == len(images)
    assert "demo:" not in done.stderr and "demo photos" not in done.stderr
