"""Whole jobs on every input kind against the local server: CSV rows with URIs, JSONL rows with
inline base64, file lists, mixed --inputs (each checked row by row against known labels), and
the bad-input corpus (every file accounted for, at the right stage, exit status 0).
"""
import base64
import glob
import io
import json
import os
import random
import struct
import zlib

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from localserver.demo import write_image
from pipeline.run import main, run
from protocols import make_protocol
from tests.helpers import (assert_accounted, labelled_images, LOCAL_RUNNER, read_dead_letters,
                           read_predictions)
from transforms.encode import EncodeInstances
from transforms.read import input_sources, ReadInputs
from transforms.select import SelectTodo

LABELS = ["red", "green", "blue", "yellow", "cyan", "magenta", "white", "black"]


def job(server, output, *inputs, extra=()):
    argv = [f"--input={i}" for i in inputs] + [
        "--endpoint", server.endpoint("mlengine"), "--output", str(output), *extra]
    return run(argv)


def top_labels(output) -> dict:
    return {r["key"]: r["top_label"] for r in read_predictions(str(output))}


def b64_of(path) -> str:
    with open(path, "rb") as f:
        return base64.b64encode(f.read()).decode("ascii")


# -- rows --------------------------------------------------------------------------------------

def test_csv_of_relative_uris_with_key_field_and_passthrough(server, tmp_path):
    truth = labelled_images(tmp_path / "images", LABELS)
    rows = tmp_path / "rows.csv"
    with open(rows, "w", newline="", encoding="utf-8") as f:
        f.write("sku,image,note\n")
        for i, path in enumerate(truth):
            f.write(f"sku-{i},\"{os.path.relpath(path, tmp_path)}\",n{i}\n")
    summary = job(server, tmp_path / "out" / "p", rows,
                  extra=["--uri_field", "image", "--key_field", "sku",
                         "--passthrough_fields", "note"])
    assert_accounted(summary)
    assert (summary["inputs"], summary["predicted"]) == (len(truth), len(truth))
    predictions = {r["key"]: r for r in read_predictions(str(tmp_path / "out" / "p"))}
    for i, label in enumerate(truth.values()):
        assert predictions[f"sku-{i}"]["top_label"] == label
        assert predictions[f"sku-{i}"]["note"] == f"n{i}"


def test_jsonl_of_inline_base64_keys_by_file_and_line(server, tmp_path):
    truth = labelled_images(tmp_path / "images", LABELS)
    rows = tmp_path / "rows.jsonl"
    with open(rows, "w", encoding="utf-8") as f:
        for path in truth:
            f.write(json.dumps({"image_b64": b64_of(path), "label": "unused"}) + "\n")
    summary = job(server, tmp_path / "out" / "p", rows, extra=["--b64_field", "image_b64"])
    assert_accounted(summary)
    assert summary["predicted"] == len(truth)
    expected = {f"{rows}:{n}": label for n, label in enumerate(truth.values(), start=1)}
    assert top_labels(tmp_path / "out" / "p") == expected


def test_file_list(server, tmp_path):
    truth = labelled_images(tmp_path / "images", LABELS)
    listing = tmp_path / "todo.txt"
    listing.write_text("# images to score\n\n" + "\n".join(truth) + "\n", encoding="utf-8")
    summary = job(server, tmp_path / "out" / "p", listing)
    assert_accounted(summary)
    assert summary["inputs"] == len(truth)
    assert top_labels(tmp_path / "out" / "p") == truth


def test_mixed_inputs_in_one_job(server, tmp_path):
    folder = labelled_images(tmp_path / "folder", LABELS[:4])
    listed = labelled_images(tmp_path / "listed", LABELS[4:])
    in_csv = labelled_images(tmp_path / "in csv", LABELS[:3], fmt_cycle=("png",))
    inline = labelled_images(tmp_path / "inline", LABELS[5:], fmt_cycle=("webp",))
    (tmp_path / "list.lst").write_text("\n".join(listed) + "\n")
    with open(tmp_path / "rows.csv", "w", encoding="utf-8") as f:
        f.write("uri\n" + "".join(f"\"{p}\"\n" for p in in_csv))
    with open(tmp_path / "rows.ndjson", "w", encoding="utf-8") as f:
        for path in inline:
            f.write(json.dumps({"bytes": b64_of(path)}) + "\n")
    summary = job(server, tmp_path / "out" / "p", tmp_path / "folder", tmp_path / "list.lst",
                  tmp_path / "rows.csv", tmp_path / "rows.ndjson", extra=["--b64_field", "bytes"])
    assert_accounted(summary)
    expected = {**folder, **listed, **in_csv}
    expected.update({f"{tmp_path / 'rows.ndjson'}:{n}": label
                     for n, label in enumerate(inline.values(), start=1)})
    assert summary["predicted"] == len(expected)
    assert top_labels(tmp_path / "out" / "p") == expected


# -- the bad-input corpus ----------------------------------------------------------------------

def noise_jpeg(path, side=800):
    img = Image.frombytes("RGB", (side, side), random.Random(3).randbytes(3 * side * side))
    img.save(path, "JPEG", quality=95)


def truncated_jpeg() -> bytes:
    """A small JPEG cut in the middle of its scan data: the header parses, the pixels don't."""
    buf = io.BytesIO()
    Image.frombytes("RGB", (40, 40), random.Random(5).randbytes(4800)).save(buf, "JPEG")
    data = buf.getvalue()
    sos = data.index(b"\xff\xda")  # start of scan, then its header's length
    scan = sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")
    return data[:scan + (len(data) - scan) // 2]


def bomb_png(path, width=20000, height=20000):
    """A real PNG declaring width x height pixels whose data compresses to a few hundred KB."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    compressor = zlib.compressobj(9)
    row = b"\x00" + b"\x00" * width  # filter byte + one palette index per pixel
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n"
                + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0))
                + chunk(b"PLTE", b"\xff\x00\x00") + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_bad_input_corpus_never_stops_the_job(server, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    truth = labelled_images(corpus, LABELS, size=(16, 16))
    for rel, label in (("été 2024/red café ñ.jpg", "red"), ("with space/a b/green 1.png", "green"),
                       ("日本/青.webp", "blue")):
        truth[str(corpus / rel)] = label
        write_image(str(corpus / rel), label, size=(16, 16))
    (corpus / "empty.jpg").write_bytes(b"")
    (corpus / "text.jpg").write_text("this is a text file named .jpg")
    (corpus / "truncated.jpg").write_bytes(truncated_jpeg())
    bomb_png(corpus / "bomb.png")
    noise_jpeg(corpus / "huge.jpg")
    (corpus / ".hidden.jpg").write_bytes(b"hidden")
    (corpus / "README.md").write_text("not an image")
    # A dangling symlink: links found while listing are not followed, and counted as skipped.
    os.symlink(corpus / "deleted.jpg", corpus / "dangling.jpg")

    rows = tmp_path / "rows.csv"
    rows.write_text("uri,note\n\"corpus/été 2024/red café ñ.jpg\",dup\n"
                    "corpus/does/not/exist.jpg,missing\n", encoding="utf-8")
    inline = tmp_path / "rows.jsonl"
    inline.write_text("\n".join([
        json.dumps({"img": b64_of(corpus / "with space/a b/green 1.png")}),
        "{not json",
        json.dumps({"other": "field"}),
        json.dumps({"img": "***not base64***"}),
    ]) + "\n", encoding="utf-8")

    output = tmp_path / "out" / "p"
    status = main([f"--input={corpus}", f"--input={rows}", f"--input={inline}",
                   "--b64_field", "img", "--max_request_bytes", "3000",
                   "--endpoint", server.endpoint("mlengine"), "--output", str(output)])
    assert status == 0
    summary = json.loads(capsys.readouterr().out)
    assert_accounted(summary)

    expected_failures = {
        str(corpus / "empty.jpg"): "decode",
        str(corpus / "text.jpg"): "decode",
        str(corpus / "bomb.png"): "decode",
        str(corpus / "huge.jpg"): "encode",
        str(corpus / "truncated.jpg"): "predict",  # its header parses; the server rejects it
        str(tmp_path / "corpus/does/not/exist.jpg"): "read",
        f"{inline}:2": "read",
        f"{inline}:3": "read",
        f"{inline}:4": "read",
    }
    dead = {r["key"]: r for r in read_dead_letters(summary["errors"])}
    assert {k: r["stage"] for k, r in dead.items()} == expected_failures
    assert "decompression bomb" in dead[str(corpus / "bomb.png")]["error"]
    assert "does not fit --max_request_bytes=3000" in dead[str(corpus / "huge.jpg")]["error"]
    assert "empty file" in dead[str(corpus / "empty.jpg")]["error"]
    assert f"{rows}:3" in dead[str(tmp_path / "corpus/does/not/exist.jpg")]["error"]
    assert "line 2: not JSON" in dead[f"{inline}:2"]["error"]
    assert "no value in 'img' or 'uri'" in dead[f"{inline}:3"]["error"]
    assert "invalid base64" in dead[f"{inline}:4"]["error"]

    expected_predictions = dict(truth)
    expected_predictions[f"{inline}:1"] = "green"
    assert top_labels(output) == expected_predictions

    files = [p for p in glob.glob(f"{corpus}/**", recursive=True) if os.path.isfile(p)]
    files += glob.glob(f"{corpus}/.*")
    assert summary["skipped_by_reason"] == {"hidden": 1, "not_image": 1, "duplicate_key": 1,
                                            "symlink": 1}
    # every file in the corpus is predicted, failed or skipped (the dangling link too);
    # plus 2 csv and 4 jsonl rows
    assert summary["inputs"] == len(set(files)) + 1 + 2 + 4
    assert summary["predicted"] == len(expected_predictions)
    assert summary["failed"] == len(expected_failures)


def test_file_that_vanishes_between_listing_and_reading(tmp_path):
    """MatchedEntry by ReadInputs, deleted right after (a step standing for another process), then
    read: a `read` dead letter naming the file, and its neighbours go on."""
    labelled = labelled_images(tmp_path, ["red", "blue"])
    victim, survivor = list(labelled)

    def delete_victim(ref):
        if ref.key == victim and os.path.exists(victim):
            os.remove(victim)
        return ref

    with TestPipeline(runner=LOCAL_RUNNER) as p:
        refs = p | ReadInputs(input_sources([str(tmp_path)])) | SelectTodo()
        encoded = (refs.refs | "Vanish" >> beam.Map(delete_victim)
                   | EncodeInstances(make_protocol("mlengine"), 1_500_000))
        assert_that(encoded.instances | beam.Map(lambda i: i.key), equal_to([survivor]),
                    label="survivor")
        assert_that(encoded.failed | beam.Map(lambda r: (r["key"], r["stage"], r["error"])),
                    equal_to([(victim, "read", f"file not found: {victim}")]), label="victim")
