"""`python -m localserver.demo --nearest RUN`: each demo photo's nearest other images by the
cosine similarity of the run's `embedding` column, read from Parquet files written here."""
import os

import numpy as np

from localserver import demo
from tests import synthetic_runs


def photo_run(folder):
    """A run over a demo-like set: the four photos, a copy of each whose vector is the
    photo's with a little noise, a colour image, and a row without an embedding."""
    rng = np.random.default_rng(3)
    base = {name: rng.normal(size=16) for name in demo.PHOTO_CLASSES}
    keys, vectors = [], []
    for name, vector in base.items():
        stem = name.split(".")[0]
        keys += [f"{folder}/images/photos/{name}", f"{folder}/images/batch_b/{stem}_07.webp"]
        vectors += [vector, vector * 0.5 + rng.normal(scale=0.05, size=16)]
    keys.append(f"{folder}/images/red_0000.jpg")
    vectors.append(rng.normal(size=16))
    table = synthetic_runs.predictions(keys, 2, embeddings=np.asarray(vectors, np.float32))
    no_vector = synthetic_runs.predictions([f"{folder}/images/corrupt.png"], 1)
    table = table.__class__.from_batches(table.to_batches() + no_vector.to_batches())
    return synthetic_runs.write_run(str(folder), table, latencies_ms=[50]), keys


def test_each_photo_has_its_own_copy_nearest(tmp_path):
    prefix, keys = photo_run(tmp_path)
    found = demo.nearest_images(prefix)
    assert sorted(found) == sorted(k for k in keys if "/photos/" in k)
    for photo, near in found.items():
        stem = os.path.basename(photo).split(".")[0]
        assert near[0][0].endswith(f"batch_b/{stem}_07.webp") and near[0][1] > 0.99
        assert photo not in [key for key, _ in near] and len(near) == 3
        assert [c for _, c in near] == sorted((c for _, c in near), reverse=True)


def test_the_command_prints_one_line_per_photo(tmp_path, capsys):
    prefix, _ = photo_run(tmp_path)
    assert demo.main(["--nearest", prefix]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("demo photos, nearest other images by cosine similarity")
    assert len(lines) == 1 + len(demo.PHOTO_CLASSES)
    assert lines[1].split()[:2] == ["camera.jpg", "batch_b/camera_07.webp"]


def test_a_run_without_embeddings_says_so(tmp_path, capsys):
    keys = [f"{tmp_path}/images/photos/cat.jpg", f"{tmp_path}/images/cat_01.png"]
    prefix = synthetic_runs.write_run(str(tmp_path), synthetic_runs.predictions(keys, 1))
    assert demo.main(["--nearest", prefix]) == 1
    assert "no embeddings" in capsys.readouterr().out
