"""TFRecord inputs (transforms/tfrecords.py): framing, Example parsing, the ReadTFRecords
composite, and jobs end to end against the local server, local and gs:// (emulator).

Every TFRecord file is written here by an independent writer: the `tfrecord` package
(its TFRecordWriter, its CRC from the `crc32c` package, its protoc-generated `example_pb2`),
not by the Beam code and hand-built descriptors the pipeline reads with.
"""
import glob
import gzip
import os
import struct
import time

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from tfrecord import example_pb2
from tfrecord.writer import TFRecordWriter

from core.records import ImageRef
from localserver.demo import LABEL_COLOURS
from pipeline.config import build_config
from pipeline.options import ConfigError, parse_options
from pipeline.run import run
from tests.test_crashsafe import job_command, kill_when
from tests.helpers import (assert_accounted, counters, EMULATOR_BUCKET as BUCKET, exactly_once,
                           jpeg, LOCAL_RUNNER, read_dead_letters, read_predictions)
from transforms import examples, tfrecords
from transforms.examples import RecordError
from transforms.listing import MatchedEntry
from transforms.read import input_format
from transforms.tfrecords import (_ReadTFRecordsFn, Damage, framed_records, ReadTFRecords, Record,
                                  record_ref, TFRecordSpec)

LABELS = list(LABEL_COLOURS)
IMAGES = {label: jpeg(label, size=(16, 12), seed=i) for i, label in enumerate(LABELS)}


# -- the independent writer -----------------------------------------------------------------

def example(i, **extra):
    """The datum of record `i` for TFRecordWriter: an image of LABELS[i % 8], its name and
    label, and `extra` features ({name: (value, "byte"|"int"|"float")})."""
    label = LABELS[i % len(LABELS)]
    datum = {"image/encoded": (IMAGES[label], "byte"),
             "image/filename": (f"img_{i:05d}.jpg".encode(), "byte"),
             "image/class/text": (label.encode(), "byte"),
             "image/class/label": (i % len(LABELS), "int")}
    datum.update(extra)
    return datum


def write_examples(path, data):
    """TFRecord file of these Examples (datums); returns each record's byte offset."""
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    offsets, offset = [], 0
    writer = TFRecordWriter(str(path))
    for datum in data:
        offsets.append(offset)
        writer.write(datum)
        offset += 16 + len(TFRecordWriter.serialize_tf_example(datum))
    writer.close()
    return offsets


def write_raw(path, records):
    """TFRecord file whose records are these bytes (the writer's own masked CRC)."""
    with open(str(path), "wb") as f:
        for data in records:
            length = struct.pack("<Q", len(data))
            f.write(length + TFRecordWriter.masked_crc(length) + data
                    + TFRecordWriter.masked_crc(data))


def gzip_file(path):
    """`path` gzip-compressed as `path`.gz (the original removed)."""
    with open(path, "rb") as f:
        data = f.read()
    with gzip.open(f"{path}.gz", "wb") as f:
        f.write(data)
    os.remove(path)
    return f"{path}.gz"


def flip_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def truth_of(path, count, first=0):
    return {f"{path}:{i}": LABELS[(first + i) % len(LABELS)] for i in range(count)}


def records_of(path):
    with tfrecords.open_stream(str(path)) as f:
        return list(framed_records(f.read))


# -- the Example messages, against protoc's -------------------------------------------------

def test_examples_read_the_same_as_protoc_generated_messages_both_ways():
    datum = example(3, **{"scores": ([0.1, 2.5, -1e-3], "float"), "ids": ([7, -2**63], "int"),
                          "empty": ([], "byte")})
    theirs = TFRecordWriter.serialize_tf_example(datum)
    features = examples.example_features(theirs, "here")
    assert features["image/encoded"].bytes_list.value == [IMAGES["yellow"]]
    assert list(features["ids"].int64_list.value) == [7, -2**63]
    assert examples.feature_text(features["scores"]) == "[0.1,2.5,-0.001]"
    assert examples.feature_text(features["image/class/label"]) == "3"
    assert examples.feature_text(features["empty"]) is None

    ours = examples.Example.FromString(theirs).SerializeToString(deterministic=True)
    parsed = example_pb2.Example.FromString(ours)
    assert parsed == example_pb2.Example.FromString(theirs)


def test_a_record_that_is_not_an_example_says_how_to_read_raw_records():
    with pytest.raises(RecordError, match=r"here: not a tf.train.Example .*--tfrecord_feature ''"):
        examples.example_features(b"\xff\xd8\xff\xe0 a JPEG's bytes", "here")


def test_passthrough_text_of_each_kind_of_feature():
    data = TFRecordWriter.serialize_tf_example({
        "f": (0.1, "float"), "i": (-5, "int"), "b": ("héllo".encode(), "byte"),
        "bin": (b"\xff\x00a", "byte"), "several": ([b"a", b"b"], "byte")})
    features = examples.example_features(data, "x")
    texts = {name: examples.feature_text(features[name]) for name in features}
    assert texts == {"f": "0.1", "i": "-5", "b": "héllo", "bin": "\\xff\x00a",
                     "several": '["a","b"]'}


def test_record_ref_takes_image_key_and_fields_from_features():
    data = TFRecordWriter.serialize_tf_example(example(1, id=(b"cat-17", "byte")))
    record = Record(4, 1000, data)
    spec = TFRecordSpec("image/encoded", "id", ("image_filename", "image_class_label", "id",
                                                "nope"))
    ref = record_ref(record, "/d/a.tfrecord", spec)
    assert ref.key == "cat-17" and ref.origin == "/d/a.tfrecord:4"
    assert ref.uri is None and ref.size == len(IMAGES["green"])
    assert ref.fields == {"image_filename": "img_00001.jpg", "image_class_label": "1",
                          "id": "cat-17", "nope": None}
    default = record_ref(record, "/d/a.tfrecord", TFRecordSpec())
    assert default.key == "/d/a.tfrecord:4" and default.fields == {}
    raw = record_ref(Record(0, 0, b"bytes"), "/d/r.tfrecord", TFRecordSpec(None))
    assert raw.key == "/d/r.tfrecord:0" and raw.inline_b64 == "Ynl0ZXM="


@pytest.mark.parametrize("spec, message", [
    (TFRecordSpec("image/jpeg"), "no feature 'image/jpeg' (--tfrecord_feature; features: "
                                 "image/class/label, image/class/text, image/encoded, "
                                 "image/filename)"),
    (TFRecordSpec("image/class/label"), "feature 'image/class/label' holds 1 int64 value, not "
                                        "one bytes value (--tfrecord_feature)"),
    (TFRecordSpec(key_field="id"), "no feature 'id' (--key_field; features: "),
    (TFRecordSpec(key_field="image/encoded"), "key feature 'image/encoded' is not valid UTF-8"),
])
def test_record_without_the_named_feature_is_an_error_naming_what_it_has(spec, message):
    data = TFRecordWriter.serialize_tf_example(example(0))
    with pytest.raises(RecordError) as raised:
        record_ref(Record(2, 88, data), "/d/a.tfrecord", spec)
    assert str(raised.value).startswith("/d/a.tfrecord: record 2 at byte 88: " + message)


# -- framing --------------------------------------------------------------------------------

def test_records_come_in_order_with_their_offsets(tmp_path):
    path = tmp_path / "a.tfrecord"
    data = [example(i) for i in range(5)]
    offsets = write_examples(path, data)
    records = records_of(path)
    assert records == [Record(i, offsets[i], TFRecordWriter.serialize_tf_example(d))
                       for i, d in enumerate(data)]
    gz = gzip_file(str(path))
    assert records_of(gz) == records


def test_a_bad_data_crc_skips_one_record_and_a_truncated_tail_ends_the_file(tmp_path):
    path = str(tmp_path / "a.tfrecord")
    offsets = write_examples(path, [example(i) for i in range(6)])
    flip_byte(path, offsets[2] + 20)  # inside record 2's data
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 30)  # record 5 loses its last bytes
    items = records_of(path)
    assert [type(item).__name__ for item in items] == ["Record"] * 2 + ["Damage"] + \
        ["Record"] * 2 + ["Damage"]
    assert items[2] == Damage(2, offsets[2], "data CRC mismatch: record skipped", False)
    assert [r.index for r in items if isinstance(r, Record)] == [0, 1, 3, 4]
    tail = items[5]
    assert (tail.index, tail.offset, tail.ends_file) == (5, offsets[5], True)
    assert tail.error.startswith("truncated: the file ends ")


def test_a_bad_length_crc_ends_the_file(tmp_path):
    path = str(tmp_path / "a.tfrecord")
    offsets = write_examples(path, [example(i) for i in range(4)])
    flip_byte(path, offsets[1] + 3)  # record 1's length
    items = records_of(path)
    assert len(items) == 2 and isinstance(items[0], Record)
    assert items[1] == Damage(1, offsets[1], "length CRC mismatch: the rest of the file "
                                             "cannot be framed and is not read", True)


def test_a_record_longer_than_allowed_is_skipped_unread(tmp_path):
    path = str(tmp_path / "raw.tfrecord")
    write_raw(path, [b"a" * 10, b"b" * 100, b"c" * 10])
    with open(path, "rb") as f:
        items = list(framed_records(f.read, max_record_bytes=50))
    assert [getattr(i, "data", None) for i in items] == [b"a" * 10, None, b"c" * 10]
    assert items[1].error.startswith("a record of 100 bytes, over the 50 bytes")


def test_a_cut_gzip_stream_ends_the_file_after_its_whole_records(tmp_path):
    path = str(tmp_path / "a.tfrecord")
    write_raw(path, [os.urandom(3000) for _ in range(20)])  # incompressible: cut lands mid-way
    gz = gzip_file(path)
    with open(gz, "r+b") as f:
        f.truncate(os.path.getsize(gz) // 2)
    items = records_of(gz)
    assert 5 <= len(items) <= 15
    assert all(isinstance(i, Record) for i in items[:-1])
    assert items[-1].ends_file and items[-1].index == len(items) - 1
    assert items[-1].error.startswith("the compressed stream breaks here (EOFError: ")


def test_a_file_that_cannot_be_opened_is_one_dead_letter_keyed_by_the_file(tmp_path):
    fn = _ReadTFRecordsFn(TFRecordSpec())
    fn.start_bundle()
    gone = str(tmp_path / "gone.tfrecord")
    [letter] = list(fn.process((gone, MatchedEntry(100))))
    assert letter.tag == "failed" and letter.value["key"] == gone
    assert letter.value["error"].startswith(f"{gone}: cannot read TFRecords: ")


# -- formats and flags ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a.tfrecord", "gs://b/x/A.TFRecords", "a.tfrecord.gz",
                                  "mnist-train.tfrecord-00003-of-00016", "gs://b/d/*.tfrecord*",
                                  "d/train.tfrecord-*", "d/*.tfrecord.gz"])
def test_tfrecord_files_are_known_by_their_names(name):
    assert input_format(name) == "tfrecord"
    assert input_format("train-00000-of-01024", "tfrecord") == "tfrecord"
    assert input_format("a.tfrecord.json") == "jsonl"
    assert input_format("d/x.tfrecord-notes.csv") == "csv"
    assert input_format("gs://b/sets/*") == "images"


def options(tmp_path, *extra):
    return parse_options(["--input", str(tmp_path / "a.tfrecord"), "--endpoint",
                          "http://127.0.0.1:9/v1/m:predict", "--output", str(tmp_path / "p"),
                          *extra])


def test_flags_make_the_tfrecord_spec(tmp_path):
    config = build_config(options(tmp_path, "--key_field", "id", "--passthrough_fields",
                                  "image_filename"))
    assert config.tfrecord == TFRecordSpec("image/encoded", "id", ("image_filename",))
    assert config.sources[0].format == "tfrecord"
    assert build_config(options(tmp_path, "--tfrecord_feature", "")).tfrecord.feature is None
    with pytest.raises(ConfigError, match="--key_field names a feature of a tf.train.Example"):
        build_config(options(tmp_path, "--tfrecord_feature", "", "--key_field", "id"))


# -- the composite --------------------------------------------------------------------------

def test_read_tfrecords_gives_refs_and_read_dead_letters_with_file_and_offset(tmp_path):
    good = str(tmp_path / "in" / "good.tfrecord")
    write_examples(good, [example(i) for i in range(3)])
    gz = gzip_file(good)
    bad = str(tmp_path / "in" / "bad.tfrecords")
    offsets = write_examples(bad, [example(i) if i != 2 else {"x": (b"no image", "byte")}
                                   for i in range(5)])
    flip_byte(bad, offsets[1] + 30)
    with open(bad, "r+b") as f:
        f.truncate(offsets[4] + 5)
    empty = tmp_path / "in" / "empty.tfrecord"
    empty.write_bytes(b"")
    with TestPipeline(runner=LOCAL_RUNNER) as p:
        read = p | ReadTFRecords([str(tmp_path / "in" / "*"), bad])
        assert_that(read.refs | "Keys" >> beam.Map(lambda r: (r.key, r.size)), equal_to(
            [(f"{gz}:{i}", len(IMAGES[LABELS[i]])) for i in range(3)]
            + [(f"{bad}:0", len(IMAGES["red"])), (f"{bad}:3", len(IMAGES["yellow"]))]),
            label="refs")
        assert_that(read.failed | "Letters" >> beam.Map(
            lambda d: (d["key"], d["stage"], d["error"])), equal_to([
                (f"{bad}:1", "read", f"{bad}: record 1 at byte {offsets[1]}: data CRC "
                                     f"mismatch: record skipped"),
                (f"{bad}:2", "read", f"{bad}: record 2 at byte {offsets[2]}: no feature "
                                     f"'image/encoded' (--tfrecord_feature; features: x)"),
                (f"{bad}:4", "read", f"{bad}: record 4 at byte {offsets[4]}: truncated: the "
                                     f"file ends 5 bytes into a record's 12-byte header")]),
            label="failed")
    totals = counters(p.result)
    assert totals["inputs"] == 3 + 5 and totals["failed_read"] == 3


def test_raw_records_are_the_images(tmp_path):
    path = str(tmp_path / "raw.tfrecord")
    write_raw(path, [IMAGES["red"], IMAGES["blue"]])
    with TestPipeline(runner=LOCAL_RUNNER) as p:
        refs = p | ReadTFRecords([path], TFRecordSpec(None))
        assert_that(refs.refs, equal_to([
            ImageRef(f"{path}:0", None, tfrecords.base64.b64encode(IMAGES["red"]).decode(),
                     len(IMAGES["red"]), {}, f"{path}:0"),
            ImageRef(f"{path}:1", None, tfrecords.base64.b64encode(IMAGES["blue"]).decode(),
                     len(IMAGES["blue"]), {}, f"{path}:1")]))


# -- end to end -----------------------------------------------------------------------------

def job(server, output, *inputs_and_flags):
    return run([*inputs_and_flags, "--endpoint", server.endpoint("mlengine"),
                "--output", str(output)])


def test_corrupt_truncated_and_featureless_records_are_dead_letters_and_the_rest_predicted(
        tmp_path, server):
    folder = tmp_path / "data"
    whole = str(folder / "train-0.tfrecord")
    write_examples(whole, [example(i) for i in range(8)])
    broken = str(folder / "train-1.tfrecord")
    offsets = write_examples(broken, [example(i, id=(f"id-{i}".encode(), "byte"))
                                      if i != 4 else {"image/png": (b"x", "byte"),
                                                      "id": (b"id-4", "byte")}
                                      for i in range(8)])
    flip_byte(broken, offsets[2] + 40)  # record 2's data: skipped, the file goes on
    with open(broken, "r+b") as f:
        f.truncate(offsets[7] + 10)  # record 7 cut in its header
    summary = job(server, tmp_path / "out" / "p", "--input", str(folder / "*.tfrecord"),
                  "--output_format", "both", "--passthrough_fields",
                  "image_filename,image_class_text")
    rows = read_predictions(str(tmp_path / "out" / "p"))
    expected = {**truth_of(whole, 8), **{f"{broken}:{i}": LABELS[i] for i in (0, 1, 3, 5, 6)}}
    assert {r["key"]: r["top_label"] for r in rows} == expected
    assert all(r["image_class_text"] == r["top_label"] for r in rows)
    assert {r["image_filename"] for r in rows if r["key"].startswith(broken)} == \
        {f"img_{i:05d}.jpg" for i in (0, 1, 3, 5, 6)}
    letters = {d["key"]: d for d in read_dead_letters(summary["errors"])}
    assert sorted(letters) == [f"{broken}:{i}" for i in (2, 4, 7)]
    assert {d["stage"] for d in letters.values()} == {"read"}
    assert letters[f"{broken}:2"]["error"] == \
        f"{broken}: record 2 at byte {offsets[2]}: data CRC mismatch: record skipped"
    assert letters[f"{broken}:4"]["error"].endswith(
        "no feature 'image/encoded' (--tfrecord_feature; features: id, image/png)")
    assert letters[f"{broken}:7"]["error"].startswith(
        f"{broken}: record 7 at byte {offsets[7]}: truncated")
    assert summary["inputs"] == 16 and summary["predicted"] == 13
    assert summary["failed_by_stage"] == {"read": 3}
    assert_accounted(summary)


def test_key_field_and_a_missing_first_feature_stop_before_the_job(tmp_path, server):
    path = str(tmp_path / "a.tfrecord")
    write_examples(path, [example(i, id=(f"photo-{i}".encode(), "byte")) for i in range(4)])
    summary = job(server, tmp_path / "p", "--input", path, "--key_field", "id",
                  "--output_format", "jsonl")
    rows = read_predictions(str(tmp_path / "p"), "jsonl")
    assert {r["key"]: r["top_label"] for r in rows} == {f"photo-{i}": LABELS[i]
                                                        for i in range(4)}
    assert_accounted(summary)
    with pytest.raises(ConfigError, match=r"a.tfrecord: record 0 at byte 0: no feature "
                                          r"'image/jpeg' \(--tfrecord_feature; features: "):
        job(server, tmp_path / "q", "--input", path, "--tfrecord_feature", "image/jpeg")
    raw = str(tmp_path / "raw.tfrecord")
    write_raw(raw, [IMAGES["red"]])
    with pytest.raises(ConfigError, match=r"raw.tfrecord: record 0 at byte 0: not a "
                                          r"tf.train.Example .*give --tfrecord_feature ''"):
        job(server, tmp_path / "r", "--input", raw)
    assert server.stats()["requests"] == 1


def test_gs_tfrecords_plain_and_gzip_against_the_emulator(tmp_path, server, gcs):
    plain = str(tmp_path / "a.tfrecord")
    write_examples(plain, [example(i) for i in range(5)])
    zipped = str(tmp_path / "b.tfrecord")
    offsets = write_examples(zipped, [example(i) for i in range(6)])
    with open(zipped, "r+b") as f:
        f.truncate(offsets[5] + 20)
    zipped = gzip_file(zipped)
    for path in (plain, zipped):
        gcs.blob(f"sets/{os.path.basename(path)}").upload_from_filename(path)
    summary = job(server, tmp_path / "out" / "p", "--input", f"gs://{BUCKET}/sets/a.tfrecord",
                  "--input", f"gs://{BUCKET}/sets/*.tfrecord.gz")
    rows = read_predictions(str(tmp_path / "out" / "p"))
    a, b = f"gs://{BUCKET}/sets/a.tfrecord", f"gs://{BUCKET}/sets/b.tfrecord.gz"
    assert {r["key"]: r["top_label"] for r in rows} == {**truth_of(a, 5), **truth_of(b, 5)}
    letters = read_dead_letters(summary["errors"])
    assert [(d["key"], d["stage"]) for d in letters] == [(f"{b}:5", "read")]
    assert letters[0]["error"].startswith(
        f"{b}: record 5 at byte {offsets[5]} of the decompressed stream: truncated")
    assert summary["inputs"] == 11 and summary["predicted"] == 10
    assert_accounted(summary)


def test_backfill_and_resume_with_tfrecord_keys(tmp_path, server):
    path = str(tmp_path / "a.tfrecord.gz")
    write_examples(path[:-3], [example(i) for i in range(12)])
    gzip_file(path[:-3])
    out = tmp_path / "out" / "p"
    first = job(server, out, "--input", path, "--limit", "5")
    assert first["predicted"] == 5 and server.stats()["instances"] == 5
    server.reset_stats()
    rest = job(server, out, "--input", path, "--skip_existing")
    assert rest["predicted"] == 7 and server.stats()["instances"] == 7
    assert rest["skipped_by_reason"] == {"existing": 5}
    server.reset_stats()
    again = job(server, out, "--input", path, "--skip_existing")
    assert again["predicted"] == 0 and server.stats()["instances"] == 0
    assert again["skipped_by_reason"] == {"existing": 12}
    keys = [r["key"] for r in read_predictions(str(out))]
    assert exactly_once(keys) == {} and set(keys) == set(truth_of(path, 12))
    for summary in (first, rest, again):
        assert_accounted(summary)


def test_ten_thousand_records_end_to_end(tmp_path, server):
    count, files = 10_000, 4
    per_file = count // files
    paths = []
    for n in range(files):
        path = str(tmp_path / "set" / f"part-{n}.tfrecord")
        write_examples(path, [example(n * per_file + i) for i in range(per_file)])
        paths.append(gzip_file(path) if n % 2 else path)
    started = time.monotonic()
    summary = job(server, tmp_path / "out" / "p", "--input", str(tmp_path / "set"),
                  "--input_format", "tfrecord", "--max_instances_per_request", "100")
    elapsed = time.monotonic() - started
    rows = read_predictions(str(tmp_path / "out" / "p"))
    truth = {}
    for n, path in enumerate(paths):
        truth.update(truth_of(path, per_file, first=n * per_file))
    assert len(rows) == count
    assert {r["key"]: r["top_label"] for r in rows} == truth
    assert summary["inputs"] == summary["predicted"] == count
    assert server.stats()["instances"] == count
    assert_accounted(summary)
    print(f"\n10,000 TFRecord records end to end: {elapsed:.1f} s")


def test_a_killed_tfrecord_job_resumes_whole_under_its_record_keys(tmp_path, make_server):
    """SIGKILL once half the records were answered; the same command at once writes every
    `file:index` key exactly once into its own shards and re-sends at most 10 % extra."""
    count = 2000
    path = str(tmp_path / "set" / "a.tfrecord")
    write_examples(path, [example(i) for i in range(count)])
    out = tmp_path / "out" / "p"
    slow = make_server(latency_ms=20)
    command = job_command(path, slow.endpoint("mlengine"), out)
    kill_when(command, lambda: slow.stats()["instances"] >= count // 2, "half way")
    answered = slow.stats()["instances"]
    slow.reset_stats()
    resumed = run(command[3:])
    assert_accounted(resumed)
    assert slow.stats()["instances"] <= count - answered + count // 10
    keys = [r["key"] for r in read_predictions(str(out))]
    assert exactly_once(keys) == {} and set(keys) == set(truth_of(path, count))
    assert glob.glob(f"{out}-*.parts") == []
