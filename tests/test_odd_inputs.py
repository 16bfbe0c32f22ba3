"""Odd inputs never stop or hang the job: file names that are not UTF-8, FIFOs named like
images, symbolic links, folders whose names hold glob characters, non-images that must not be
quoted, and corrupt shards or committed parts under --output with --skip_existing.

Jobs that could hang on a FIFO run as real CLI subprocesses with a timeout.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

from core.paths import parts_dir, PREDICTION_PART_EXTENSION
from core.records import prediction_record, prediction_schema, utc_now
from localserver.demo import write_image
from pipeline.config import new_run_id
from tests.helpers import assert_accounted, read_dead_letters, read_predictions
from transforms.commit import parquet_bytes
from transforms.listing import escaped_key

JOB_TIMEOUT_S = 180


def cli_job(server, output, *inputs, extra=()):
    """The real CLI in a subprocess (bounded in time); returns (exit status, summary, stderr)."""
    argv = [sys.executable, "-m", "pipeline.run", *[f"--input={i}" for i in inputs],
            "--endpoint", server.endpoint("mlengine"), "--output", str(output), *extra]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    summary = json.loads(result.stdout) if result.returncode == 0 else None
    return result.returncode, summary, result.stderr


def image(path, label="red"):
    write_image(str(path), label, seed=1, size=(40, 32))
    return str(path)


# -- file names that are not valid UTF-8 ---------------------------------------------------------

def test_non_utf8_file_name_is_predicted_under_an_escaped_stable_key(server, tmp_path):
    folder = tmp_path / "photos"
    image(folder / "red.jpg")
    raw = os.path.join(os.fsencode(str(folder)), b"caf\xe9-\xff.jpg")  # Latin-1, not UTF-8
    shutil.copy(os.fsencode(str(folder / "red.jpg")), raw)
    key = escaped_key(os.fsdecode(raw))
    assert key == str(folder / "caf\\xe9-\\xff.jpg")

    status, summary, stderr = cli_job(server, tmp_path / "out" / "p", folder)
    assert status == 0, stderr
    assert_accounted(summary)
    assert summary["predicted"] == 2
    assert {r["key"]: r["top_label"] for r in read_predictions(str(tmp_path / "out" / "p"))} \
        == {str(folder / "red.jpg"): "red", key: "red"}

    # the same key on the next run: --skip_existing recognises it
    status, summary, stderr = cli_job(server, tmp_path / "out" / "p", folder,
                                      extra=["--skip_existing"])
    assert status == 0, stderr
    assert summary["skipped_by_reason"] == {"existing": 2}


# -- FIFOs named like images ---------------------------------------------------------------------

@pytest.mark.parametrize("given", ["folder", "glob", "explicit", "filelist", "csv"])
def test_fifo_named_like_an_image_is_never_opened(server, tmp_path, given):
    folder = tmp_path / "photos"
    good = image(folder / "red.jpg")
    fifo = str(folder / "stuck.jpg")
    os.mkfifo(fifo)
    if given == "folder":
        inputs = [folder]
    elif given == "glob":
        inputs = [f"{folder}/*.jpg"]
    elif given == "explicit":
        inputs = [good, fifo]
    elif given == "filelist":
        (tmp_path / "list.txt").write_text(f"{good}\n{fifo}\n")
        inputs = [tmp_path / "list.txt"]
    else:
        (tmp_path / "rows.csv").write_text(f"uri\n{good}\n{fifo}\n")
        inputs = [tmp_path / "rows.csv"]

    status, summary, stderr = cli_job(server, tmp_path / "out" / "p", *inputs)
    assert status == 0, stderr
    assert_accounted(summary)
    assert summary["predicted"] == 1
    if given in ("folder", "glob", "explicit"):  # listed: skipped, never opened
        assert summary["skipped_by_reason"] == {"not_regular_file": 1}
    else:  # named by a row: a read dead letter
        dead = read_dead_letters(summary["errors"])
        assert [(d["key"], d["stage"]) for d in dead] == [(fifo, "read")]
        assert "not a regular file" in dead[0]["error"]


def test_fifo_named_like_a_row_file_is_a_read_dead_letter(server, tmp_path):
    (tmp_path / "rows").mkdir()
    good = image(tmp_path / "red.jpg")
    (tmp_path / "rows" / "a.csv").write_text(f"uri\n{good}\n")
    os.mkfifo(tmp_path / "rows" / "b.csv")
    status, summary, stderr = cli_job(server, tmp_path / "out" / "p",
                                      f"{tmp_path}/rows/*.csv")
    assert status == 0, stderr
    assert_accounted(summary)
    assert (summary["predicted"], summary["failed_by_stage"]) == (1, {"read": 1})
    dead = read_dead_letters(summary["errors"])
    assert dead[0]["key"] == str(tmp_path / "rows" / "b.csv")
    assert "not a regular file" in dead[0]["error"]


# -- symbolic links -----------------------------------------------------------------------------

def test_links_found_in_a_listing_are_skipped_links_named_are_followed(server, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    target = image(elsewhere / "blue.jpg", "blue")
    image(elsewhere / "sub" / "green.jpg", "green")
    folder = tmp_path / "photos"
    real = image(folder / "red.jpg")
    os.symlink(target, folder / "linked.jpg")
    os.symlink(elsewhere / "sub", folder / "linked_folder")
    os.symlink(folder / "gone.jpg", folder / "dangling.jpg")
    linked_root = tmp_path / "photos_link"
    os.symlink(folder, linked_root)  # a linked folder given as --input is followed
    (tmp_path / "list.txt").write_text(f"{folder / 'linked.jpg'}\n")

    status, summary, stderr = cli_job(server, tmp_path / "out" / "p", folder)
    assert status == 0, stderr
    assert_accounted(summary)
    assert summary["predicted"] == 1
    assert summary["skipped_by_reason"] == {"symlink": 3}

    status, summary, stderr = cli_job(server, tmp_path / "out2" / "p", linked_root,
                                      tmp_path / "list.txt", folder / "linked.jpg")
    assert status == 0, stderr
    assert_accounted(summary)
    predictions = {r["key"]: r["top_label"] for r in read_predictions(str(tmp_path / "out2/p"))}
    assert predictions == {str(linked_root / "red.jpg"): "red",
                           str(folder / "linked.jpg"): "blue"}
    assert real not in predictions


# -- dead letters never quote file contents -----------------------------------------------------

def test_dead_letters_never_quote_file_contents(server, tmp_path):
    folder = tmp_path / "photos"
    image(folder / "red.jpg")
    secret = b"aws_secret_access_key=HUNTER2HUNTER2\n"
    (folder / "notes.jpg").write_bytes(secret)
    (folder / "binary.png").write_bytes(b"\x89PNX\x00\x01SECRETBYTES")
    # PPM headers whose decoder errors quote the file (Pillow: "Token too long ... b'9999'")
    (folder / "token.png").write_bytes(b"P6 " + b"7" * 30 + b" SECRET")
    (folder / "mode.png").write_bytes(b"P1\n3 3\nQSECRET")
    (folder / "width.png").write_bytes(b"P6 HUNTER2 SECRET")
    status, summary, stderr = cli_job(server, tmp_path / "out" / "p", folder)
    assert status == 0, stderr
    dead = read_dead_letters(summary["errors"])
    assert sorted(d["stage"] for d in dead) == ["decode"] * 5
    for d in dead:
        for quoted in ("HUNTER2", "aws_secret", "SECRET", "PNX", "\\x89", "7777", "b'Q",
                       "'Q'"):
            assert quoted not in d["error"], d


# -- folders whose names hold glob characters ---------------------------------------------------

@pytest.mark.parametrize("name", ["set[1]", "a*b", "what?"])
def test_folder_with_glob_characters_in_its_name(server, tmp_path, name):
    folder = tmp_path / name
    image(folder / "red.jpg")
    image(folder / "deep" / "blue.jpg", "blue")
    image(tmp_path / "set1" / "decoy.jpg")  # what `set[1]` would match as a glob
    image(tmp_path / "aXb" / "decoy.jpg")
    image(tmp_path / "whatX" / "decoy.jpg")
    status, summary, stderr = cli_job(server, tmp_path / "out" / "p", folder)
    assert status == 0, stderr
    assert_accounted(summary)
    assert {r["key"] for r in read_predictions(str(tmp_path / "out" / "p"))} == {
        str(folder / "red.jpg"), str(folder / "deep" / "blue.jpg")}


def test_row_file_in_a_folder_with_glob_characters(server, tmp_path):
    folder = tmp_path / "set[1]"
    good = image(folder / "red.jpg")
    (folder / "rows.csv").write_text("uri\nred.jpg\n")
    status, summary, stderr = cli_job(server, tmp_path / "out" / "p", folder / "rows.csv")
    assert status == 0, stderr
    assert [r["key"] for r in read_predictions(str(tmp_path / "out" / "p"))] == [good]


# -- --skip_existing with a corrupt earlier shard ------------------------------------------------

def test_skip_existing_with_a_truncated_shard_warns_counts_and_predicts_again(server, tmp_path):
    folder = tmp_path / "photos"
    for i, label in enumerate(["red", "blue", "green"]):
        image(folder / f"{label}{i}.jpg", label)
    output = tmp_path / "out" / "p"
    status, first, stderr = cli_job(server, output, folder, extra=["--output_format", "both"])
    assert status == 0, stderr
    parquet = [p for p in os.listdir(output.parent) if p.endswith(".parquet")]
    assert len(parquet) == 1
    shard = output.parent / parquet[0]
    shard.write_bytes(shard.read_bytes()[:100])  # truncated
    jsonl = str(shard)[:-len(".parquet")] + ".jsonl"
    with open(jsonl, "ab") as f:
        f.write(b'{"key": "cut sho')  # a torn last line

    status, summary, stderr = cli_job(server, output, folder, extra=["--skip_existing"])
    assert status == 0, stderr
    assert "Traceback" not in stderr
    assert stderr.count("could not be read") == 1, stderr
    assert summary["unreadable_shards"] == 1
    assert_accounted(summary)
    # the JSONL shard still names all three keys: nothing is predicted again
    assert summary["skipped_by_reason"] == {"existing": 3}

    os.remove(jsonl)
    status, summary, stderr = cli_job(server, output, folder, extra=["--skip_existing"])
    assert status == 0, stderr
    assert summary["unreadable_shards"] == 1
    assert summary["predicted"] == 3  # its keys are predicted again


def test_skip_existing_with_a_corrupt_committed_part_warns_counts_and_predicts_again(
        server, tmp_path):
    """A killed run's parts: a readable one is adopted, a truncated one is handled like a
    corrupt shard (one warning, counted, its keys predicted again); every key once."""
    folder = tmp_path / "photos"
    keys = sorted(image(folder / f"{label}{i}.jpg", label)
                  for i, label in enumerate(["red", "blue", "green", "red", "blue", "green"]))
    output = tmp_path / "out" / "p"
    dead = parts_dir(f"{output}-{new_run_id()}")
    now = utc_now()
    for name, part_keys in (("part-a", keys[:2]), ("part-b", keys[2:4])):
        os.makedirs(dead, exist_ok=True)
        rows = [prediction_record(k, [("red", 0.9)], "m", now) for k in part_keys]
        with open(os.path.join(dead, f"{name}-00000.{PREDICTION_PART_EXTENSION}"), "wb") as f:
            f.write(parquet_bytes(rows, prediction_schema()))
    corrupt = os.path.join(dead, f"part-b-00000.{PREDICTION_PART_EXTENSION}")
    with open(corrupt, "r+b") as f:
        f.truncate(100)

    status, summary, stderr = cli_job(server, output, folder,
                                      extra=["--skip_existing", "--parts_stale_after_s", "0"])
    assert status == 0, stderr
    assert "Traceback" not in stderr
    assert stderr.count("could not be read") == 1, stderr
    assert summary["unreadable_shards"] == 1
    assert_accounted(summary)
    assert summary["adopted"] == 2 and summary["skipped"] == 2
    assert summary["predicted"] == 4  # the corrupt part's keys and the two never sent
    written = [r["key"] for r in read_predictions(str(output))]
    assert sorted(written) == keys  # every key once
    assert not os.path.exists(dead)
