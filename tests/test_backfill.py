"""Backfill and re-runs: --skip_existing, kill -9 and resume, --retry_dead_letters, templated
output paths and passthrough fields, end to end on DirectRunner against the local server."""
import csv
import glob
import json
import os
import signal
import subprocess
import sys
import time

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from core.records import ImageRef, prediction_schema
from localserver.demo import write_image
from pipeline.config import new_run_id
from pipeline.options import ConfigError
from pipeline.run import run
from tests.helpers import (assert_accounted, check_jsonl_against_schema_file, cli, counters,
                           exactly_once, labelled_images, LOCAL_RUNNER, one_error_line,
                           read_dead_letters, read_predictions, ROOT)
from transforms.read import Outputs
from transforms.select import SelectTodo

LABELS = ["red", "green", "blue", "yellow"]
KILL_WAIT_S = 60
RUN_TIMEOUT_S = 120


def job(images, server, output, *extra):
    return run(["--input", str(images), "--endpoint", server.endpoint("mlengine"),
                "--output", str(output), *extra])


def shard_files(out):
    """Shards and summaries under an output prefix (not parts folders)."""
    return sorted(p for p in glob.glob(f"{out}-*") if not p.endswith(".parts"))


# -- SelectTodo, as a composite ------------------------------------------------------------

def select(p, refs, **kwargs):
    """SelectTodo over row refs as ReadRows makes them (no image entries, no read failures)."""
    inputs = Outputs(images=p | "NoImages" >> beam.Create([]),
                     rows=p | "Rows" >> beam.Create(refs),
                     failed=p | "NoFailures" >> beam.Create([]))
    return inputs | SelectTodo(**kwargs)


def test_select_todo_reads_only_complete_prediction_shards(tmp_path):
    out = str(tmp_path / "pred")
    run_id = new_run_id()
    schema = pa.schema([("key", pa.string())])
    pq.write_table(pa.table({"key": ["a", "b"]}, schema=schema),
                   f"{out}-{run_id}-00000-of-00001.parquet")
    with open(f"{out}-{run_id}-00000-of-00001.jsonl", "w") as f:
        f.write(json.dumps({"key": "c", "labels": []}) + "\n")
    # not prediction shards: dead letters, a killed run's temp file, a summary
    with open(f"{out}-errors-{run_id}-00000-of-00001.jsonl", "w") as f:
        f.write(json.dumps({"key": "d", "stage": "decode", "error": "x"}) + "\n")
    os.makedirs(str(tmp_path / f"beam-temp-pred-{run_id}-0f"))
    pq.write_table(pa.table({"key": ["e"]}, schema=schema),
                   str(tmp_path / f"beam-temp-pred-{run_id}-0f" / "1a.parquet"))
    with open(f"{out}-{run_id}-summary.json", "w") as f:
        f.write(json.dumps({"key": "f"}))
    refs = [ImageRef(k, f"/i/{k}.jpg") for k in "abcdefg"]
    p = TestPipeline(runner=LOCAL_RUNNER)
    todo = select(p, refs, existing_output=out)
    assert_that(todo.refs, equal_to([r for r in refs if r.key in "defg"]), label="refs")
    result = p.run()
    result.wait_until_finish()
    assert counters(result) == {"skipped_existing": 3}


def test_select_todo_for_dead_letters_and_existing(tmp_path):
    errors = str(tmp_path / "pred-errors")
    for i, keys in enumerate((["a", "b"], ["b", "c"])):
        with open(f"{errors}-{new_run_id()}-0000{i}-of-00002.jsonl", "w") as f:
            for k in keys:
                f.write(json.dumps({"key": k, "stage": "predict", "error": "503"}) + "\n")
    pq.write_table(pa.table({"key": ["c"]}),
                   str(tmp_path / f"pred-{new_run_id()}-00000-of-00001.parquet"))
    refs = [ImageRef(k, None, inline_b64="AA==") for k in "abcd"]
    p = TestPipeline(runner=LOCAL_RUNNER)
    todo = select(p, refs, existing_output=str(tmp_path / "pred"), dead_letters=errors)
    assert_that(todo.refs, equal_to(refs[:2]), label="refs")
    result = p.run()
    result.wait_until_finish()
    assert counters(result) == {"skipped_existing": 1, "skipped_not_dead_letter": 1}


# -- jobs ----------------------------------------------------------------------------------

def test_rerun_with_skip_existing_sends_zero_requests(tmp_path, server):
    truth = labelled_images(tmp_path / "images", LABELS * 2)
    corrupt = tmp_path / "images" / "corrupt.jpg"
    corrupt.write_bytes(b"not an image")
    template = str(tmp_path / "out" / "{date}" / "pred")
    first = job(tmp_path / "images", server, template, "--output_format", "jsonl",
                "--skip_existing")
    assert first["predicted"] == len(truth) and first["failed"] == 1
    assert_accounted(first)
    server.reset_stats()
    second = job(tmp_path / "images", server, template, "--output_format", "jsonl",
                 "--skip_existing")
    assert server.stats()["requests"] == 0 and second["requests"] == 0
    assert second["skipped_by_reason"] == {"existing": len(truth)}
    # the dead letter (`<output>-errors-*.jsonl`, same glob family) is not a prediction
    assert second["failed_by_stage"] == {"decode": 1}
    assert_accounted(second)
    out = os.path.dirname(first["output"])
    rows = read_predictions(os.path.join(out, "pred"), "jsonl")
    assert exactly_once(r["key"] for r in rows) == {} and len(rows) == len(truth)


@pytest.mark.parametrize("name", ["a*b/pred", "q?/pred", "out/pred[1]"])
def test_an_output_prefix_with_glob_characters_is_one_line(tmp_path, name):
    """Beam's file sinks, delete and match read paths as patterns: such a run used to fail
    after writing its shards (its parts could not be deleted), or be refused with an error
    about deleting a probe file."""
    (tmp_path / "images").mkdir()
    write_image(str(tmp_path / "images" / "a.png"), "red")
    line = one_error_line(cli("--input", str(tmp_path / "images"), "--endpoint",
                              "http://127.0.0.1:9/v1/projects/p/models/m:predict",
                              "--output", str(tmp_path / name)))
    assert f"--output {tmp_path / name} holds a glob character" in line, line


def test_images_and_parts_under_glob_characters_are_found_literally(tmp_path, server):
    """Input folders may hold glob characters; so may the earlier runs' files a backfill
    and the report look for, which are found by pattern with the characters quoted."""
    truth = labelled_images(tmp_path / "set[1]" / "a*b", LABELS)
    (tmp_path / "set1" / "ab").mkdir(parents=True)  # what a pattern would match too
    first = job(tmp_path / "set[1]" / "a*b", server, tmp_path / "out" / "pred",
                "--skip_existing", "--report")
    assert_accounted(first)
    assert first["predicted"] == len(truth)
    report = open(first["report"], encoding="utf-8").read()
    assert report.count("data:image/jpeg;base64,") >= len(truth)  # thumbnails were read
    second = job(tmp_path / "set[1]" / "a*b", server, tmp_path / "out" / "pred",
                 "--skip_existing")
    assert second["skipped_by_reason"] == {"existing": len(truth)} and second["requests"] == 0


def test_templated_paths_give_each_run_its_own_place(tmp_path, server):
    labelled_images(tmp_path / "images", LABELS)
    output = str(tmp_path / "out" / "{date}" / "pred")
    errors = str(tmp_path / "dead" / "{run_id}" / "errors")
    summaries = [job(tmp_path / "images", server, output, "--errors", errors)
                 for _ in range(2)]
    for summary in summaries:
        run_id = summary["run_id"]
        date = f"{run_id[:4]}-{run_id[4:6]}-{run_id[6:8]}"
        prefix = str(tmp_path / "out" / date / "pred")
        assert summary["output"] == f"{prefix}-{run_id}"
        assert summary["errors"] == str(tmp_path / "dead" / run_id / "errors") + f"-{run_id}"
        assert len(glob.glob(f"{prefix}-{run_id}-*-of-*.parquet")) >= 1
        assert os.path.exists(f"{prefix}-{run_id}-summary.json")
        assert_accounted(summary)
    assert summaries[0]["run_id"] != summaries[1]["run_id"]


def test_retry_dead_letters_predicts_only_their_keys(tmp_path, server):
    """Row keys that are not URIs resolve through the input rows (key_field)."""
    images = tmp_path / "images"
    truth = labelled_images(images, LABELS * 2, fmt_cycle=("jpg",))
    broken = images / "broken.jpg"
    broken.write_bytes(b"half a file")
    rows = tmp_path / "rows.csv"
    with open(rows, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "uri", "customer"])
        for i, path in enumerate(list(truth) + [str(broken)]):
            writer.writerow([f"id-{i}", path, f"c{i % 3}"])
    out = tmp_path / "out" / "pred"
    flags = ["--key_field", "id", "--passthrough_fields", "customer"]
    first = job(rows, server, out, *flags)
    broken_key = f"id-{len(truth)}"
    assert [(d["key"], d["stage"]) for d in read_dead_letters(f"{out}-errors")] == \
        [(broken_key, "decode")]
    assert_accounted(first)
    write_image(str(broken), "blue", seed=1)  # the file is fixed; retry only its key
    server.reset_stats()
    retry = job(rows, server, out, *flags, "--retry_dead_letters", f"{out}-errors")
    assert retry["predicted"] == 1 and retry["failed"] == 0
    assert retry["skipped_by_reason"] == {"not_dead_letter": len(truth)}
    assert server.stats()["instances"] == 1
    assert_accounted(retry)
    rows_out = read_predictions(str(out))
    assert sorted(r["key"] for r in rows_out) == sorted(f"id-{i}" for i in range(len(truth) + 1))
    fixed = next(r for r in rows_out if r["key"] == broken_key)
    assert fixed["top_label"] == "blue" and fixed["customer"] == f"c{len(truth) % 3}"
    # the same retry again finds the key predicted now (a retry skips existing keys by
    # default): nothing to send, no duplicate row
    server.reset_stats()
    again = job(rows, server, out, *flags, "--retry_dead_letters", f"{out}-errors")
    assert server.stats()["requests"] == 0
    assert again["skipped_by_reason"] == {"not_dead_letter": len(truth), "existing": 1}
    assert_accounted(again)
    assert sorted(r["key"] for r in read_predictions(str(out))) == \
        sorted(f"id-{i}" for i in range(len(truth) + 1))


def test_passthrough_fields_reach_parquet_jsonl_and_the_schema(tmp_path, server):
    truth = labelled_images(tmp_path / "images", LABELS, fmt_cycle=("png",))
    rows = tmp_path / "rows.jsonl"
    with open(rows, "w") as f:
        for i, path in enumerate(truth):
            row = {"uri": path, "customer": f"cust-{i}", "batch": i, "ignored": "x"}
            if i == 0:
                del row["batch"]
            f.write(json.dumps(row) + "\n")
    out = tmp_path / "out" / "pred"
    summary = job(rows, server, out, "--output_format", "both",
                  "--passthrough_fields", "customer,batch")
    assert summary["predicted"] == len(truth)
    assert_accounted(summary)
    parquet = glob.glob(f"{out}-*.parquet")
    assert all(pq.read_schema(p) == prediction_schema(("customer", "batch")) for p in parquet)
    jsonl = [p for p in glob.glob(f"{out}-*.jsonl") if "-errors-" not in p]
    back = check_jsonl_against_schema_file(jsonl, f"{out}.schema.json")
    for got in (back, read_predictions(str(out))):
        by_uri = {r["key"]: r for r in got}
        for i, path in enumerate(truth):
            assert by_uri[path]["customer"] == f"cust-{i}"
            assert by_uri[path]["batch"] == (None if i == 0 else str(i))
            assert "ignored" not in by_uri[path]
    assert summary["bq_load"].endswith(f"{out}.schema.json")


def test_the_schema_file_fits_every_run_under_its_prefix(tmp_path, server):
    """Runs under one --output with different --passthrough_fields share `<output>.schema.json`
    (it has no run id): it holds every run's columns, so each run's JSONL still loads with
    it (the second run used to drop the first run's column, and that run's bq load failed)."""
    truth = labelled_images(tmp_path / "images", LABELS, fmt_cycle=("png",))
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"uri": path, "a": "1", "b": "2"}) + "\n"
                            for path in truth))
    out = tmp_path / "out" / "pred"
    summaries = [job(rows, server, out, "--output_format", "jsonl", "--passthrough_fields",
                     fields) for fields in ("a", "b,a", "b")]
    with open(f"{out}.schema.json", encoding="utf-8") as f:
        names = [field["name"] for field in json.load(f)]
    assert names == prediction_schema(("a", "b")).names
    for summary in summaries:
        assert_accounted(summary)
        shards = glob.glob(f"{summary['output']}-*-of-*.jsonl")
        assert len(check_jsonl_against_schema_file(shards, f"{out}.schema.json")) == len(truth)


def test_killed_run_resumes_with_every_key_exactly_once(tmp_path, server, make_server):
    images = tmp_path / "images"
    out = tmp_path / "out" / "pred"
    # an earlier, finished run over the first part of the input
    first_part = labelled_images(images, LABELS * 2)
    done = job(images, server, out, "--output_format", "both", "--skip_existing")
    assert done["predicted"] == len(first_part)
    # new images arrive; a slow run over all of them is killed halfway
    more = labelled_images(tmp_path / "more", LABELS * 4, fmt_cycle=("png",))
    for path in more:
        os.replace(path, images / ("new_" + os.path.basename(path)))
    keys = sorted(glob.glob(str(images / "**" / "*.*"), recursive=True))
    assert len(keys) == len(first_part) + len(more)
    shards_before = shard_files(out)
    slow = make_server(latency_ms=150)
    command = [sys.executable, "-m", "pipeline.run", "--input", str(images),
               "--endpoint", slow.endpoint("mlengine"), "--output", str(out),
               "--output_format", "both", "--skip_existing",
               "--max_instances_per_request", "1", "--max_concurrent_requests", "2"]
    killed = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + KILL_WAIT_S
        for _ in range(KILL_WAIT_S * 50):
            if slow.stats()["requests"] >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert killed.poll() is None, "the job ended before it could be killed"
        sent_before_kill = slow.stats()["requests"]
        assert 3 <= sent_before_kill < len(more)
    finally:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait(RUN_TIMEOUT_S)
    assert killed.returncode == -signal.SIGKILL
    # the killed run left temp files and committed parts: no shard, no summary
    assert shard_files(out) == shards_before
    assert glob.glob(str(out.parent / "beam-temp-pred-*"))
    # the same command again finishes the rest, and the union holds every key exactly once
    resumed = job(images, server, out, "--output_format", "both", "--skip_existing")
    assert resumed["skipped_by_reason"] == {"existing": len(first_part)}
    assert resumed["predicted"] == len(more)
    assert_accounted(resumed)
    for fmt in ("parquet", "jsonl"):
        rows = read_predictions(str(out), fmt)
        assert exactly_once(r["key"] for r in rows) == {}, fmt
        assert sorted(r["key"] for r in rows) == keys, fmt
    # and once more: nothing left to do, nothing sent
    server.reset_stats()
    finished = job(images, server, out, "--output_format", "both", "--skip_existing")
    assert server.stats()["requests"] == 0
    assert finished["skipped"] == finished["inputs"] == len(keys)
    assert_accounted(finished)


def test_retry_with_no_dead_letters_is_a_bad_invocation(tmp_path):
    labelled_images(tmp_path / "images", LABELS[:1])
    with pytest.raises(ConfigError, match="no dead letters matched"):
        run(["--input", str(tmp_path / "images"), "--endpoint", "http://127.0.0.1:9/m:predict",
             "--output", str(tmp_path / "out" / "pred"),
             "--retry_dead_letters", str(tmp_path / "out" / "pred-errors")])
