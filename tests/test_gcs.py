"""gs:// inputs end to end against gcp-storage-emulator on 127.0.0.1: a bucket prefix gives the
same predictions, failures and counts as the same images in a local folder, and a CSV stored
in the bucket resolves its relative URIs against its own gs:// folder.

Beam's GCS filesystem asks google-auth for Application Default Credentials and, when there
are none, retries for ~20-25 s before connecting anonymously. The `gcs` fixture points
GOOGLE_APPLICATION_CREDENTIALS at a stub `authorized_user` file holding a static, unexpiring
token: google-auth loads it offline, the storage client sends it to the emulator (which
ignores it) and never refreshes it. See docs/testing.md, "Testing gs:// offline".
"""
import json
import os

import pytest

from pipeline.label_names import load_label_names
from pipeline.run import parse, run
from tests.helpers import (assert_accounted, EMULATOR_BUCKET as BUCKET, labelled_images,
                           read_dead_letters, read_predictions)

def upload_folder(bucket, folder, prefix):
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            bucket.blob(f"{prefix}/{os.path.relpath(path, folder)}").upload_from_filename(path)


def make_corpus(folder):
    truth = labelled_images(folder, ["red", "green", "blue", "yellow", "cyan", "white"])
    labelled_images(os.path.join(folder, "ünï cödé"), ["magenta"])
    with open(os.path.join(folder, "corrupt.jpg"), "wb") as f:
        f.write(b"not a jpeg")
    with open(os.path.join(folder, ".hidden.png"), "wb") as f:
        f.write(b"x")
    with open(os.path.join(folder, "notes.txt"), "w") as f:
        f.write("not an image")
    return truth


def job(server, output, *inputs):
    return run([f"--input={i}" for i in inputs]
               + ["--endpoint", server.endpoint("vertex"), "--protocol", "vertex",
                  "--output", str(output)])


def by_relative(rows, root):
    return {r["key"][len(root):]: r for r in rows}


COUNTS = ("inputs", "predicted", "failed", "skipped", "failed_by_stage", "skipped_by_reason")


def test_bucket_prefix_gives_the_same_outputs_as_the_local_folder(server, gcs, tmp_path):
    folder = tmp_path / "photos"
    make_corpus(str(folder))
    upload_folder(gcs, str(folder), "batch")

    local = job(server, tmp_path / "local" / "p", folder)
    remote = job(server, tmp_path / "remote" / "p", f"gs://{BUCKET}/batch/")
    assert_accounted(remote)
    assert {k: remote[k] for k in COUNTS} == {k: local[k] for k in COUNTS}
    assert remote["predicted"] == 7 and remote["skipped"] == 2 and remote["failed"] == 1

    local_rows = by_relative(read_predictions(str(tmp_path / "local" / "p")), f"{folder}/")
    remote_rows = by_relative(read_predictions(str(tmp_path / "remote" / "p")),
                              f"gs://{BUCKET}/batch/")
    assert set(remote_rows) == set(local_rows)
    for rel, row in remote_rows.items():
        assert row["labels"] == local_rows[rel]["labels"], rel
    remote_dead = by_relative(read_dead_letters(remote["errors"]), f"gs://{BUCKET}/batch/")
    local_dead = by_relative(read_dead_letters(local["errors"]), f"{folder}/")
    assert {k: r["stage"] for k, r in remote_dead.items()} == \
        {k: r["stage"] for k, r in local_dead.items()} == {"corrupt.jpg": "decode"}


def test_csv_in_a_bucket_resolves_relative_uris_there(server, gcs, tmp_path):
    folder = tmp_path / "photos"
    truth = labelled_images(folder, ["red", "blue", "green"])
    upload_folder(gcs, str(folder), "in")
    lines = ["uri,id"] + [f"{os.path.relpath(p, folder)},{i}" for i, p in enumerate(truth)]
    lines.append("missing/gone.jpg,99")
    gcs.blob("in/rows.csv").upload_from_string("\n".join(lines) + "\n")

    summary = run([f"--input=gs://{BUCKET}/in/rows.csv", "--key_field", "id",
                   "--endpoint", server.endpoint("mlengine"), "--output",
                   str(tmp_path / "out" / "p")])
    assert_accounted(summary)
    predicted = {r["key"]: r["top_label"] for r in read_predictions(str(tmp_path / "out" / "p"))}
    assert predicted == {str(i): label for i, label in enumerate(truth.values())}
    [dead] = read_dead_letters(summary["errors"])
    assert dead["key"] == "99" and dead["stage"] == "read"
    assert dead["error"] == (f"file not found: gs://{BUCKET}/in/missing/gone.jpg "
                             f"(row gs://{BUCKET}/in/rows.csv:{len(truth) + 2})")


def test_label_names_file_in_a_bucket(gcs):
    gcs.blob("model/labels.txt").upload_from_string("tabby\ntiger cat\n")
    gcs.blob("model/index_to_name.json").upload_from_string(
        json.dumps({"0": ["n01", "tabby"], "1": ["n02", "tiger cat"]}))
    for name in ("labels.txt", "index_to_name.json"):
        assert load_label_names(f"gs://{BUCKET}/model/{name}") == ("tabby", "tiger cat")
    _, config = parse(["--input", "/nowhere", "--endpoint", "http://127.0.0.1:9/m:predict",
                       "--output", "/nowhere/p",
                       "--label_names_file", f"gs://{BUCKET}/model/labels.txt"])
    assert config.protocol.labels.names == ("tabby", "tiger cat")
    with pytest.raises(ValueError, match=f"cannot read --label_names_file gs://{BUCKET}/no"):
        load_label_names(f"gs://{BUCKET}/no/labels.txt")
