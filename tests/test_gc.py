"""The launcher's garbage-collector settings while a job runs, and that they are undone."""
import gc
import threading

import pytest

from pipeline.run import fewer_collections, run, YOUNG_GC_THRESHOLD
from tests.helpers import labelled_images


def test_a_job_runs_with_fewer_collections_and_leaves_them_as_they_were():
    before = gc.get_threshold()
    with fewer_collections():
        assert gc.get_threshold() == (YOUNG_GC_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_settings_are_undone_when_the_job_fails():
    before = gc.get_threshold()
    with pytest.raises(RuntimeError):
        with fewer_collections():
            raise RuntimeError("the job failed")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_overlapping_jobs_undo_the_settings_when_the_last_one_ends():
    before = gc.get_threshold()
    first_in, release = threading.Event(), threading.Event()

    def first():
        with fewer_collections():
            first_in.set()
            release.wait(10)

    thread = threading.Thread(target=first)
    thread.start()
    assert first_in.wait(10)
    with fewer_collections():
        pass
    assert gc.get_threshold()[0] == YOUNG_GC_THRESHOLD  # the first job still runs
    release.set()
    thread.join(10)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_objects_the_caller_froze_stay_frozen():
    gc.freeze()
    try:
        with fewer_collections():
            assert gc.get_threshold()[0] == YOUNG_GC_THRESHOLD
        assert gc.get_freeze_count() > 0  # unfreeze() would have emptied it
    finally:
        gc.unfreeze()


def test_a_whole_run_has_fewer_collections_and_leaves_them_as_they_were(
        server, tmp_path, monkeypatch):
    labelled_images(tmp_path / "images", ["red", "blue"])
    before = gc.get_threshold()
    set_to = []
    real = gc.set_threshold
    monkeypatch.setattr(gc, "set_threshold", lambda *t: (set_to.append(t), real(*t)))
    summary = run(["--input", str(tmp_path / "images"),
                   "--endpoint", server.endpoint("mlengine"),
                   "--output", str(tmp_path / "out")])
    assert summary["predicted"] == 2
    assert set_to == [(YOUNG_GC_THRESHOLD, *before[1:]), before]
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
