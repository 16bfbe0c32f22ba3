"""Long jobs lose nothing: committed parts survive kill -9, a --skip_existing re-run sends only
what no earlier attempt committed, and the shards end up holding every key exactly once.

Real pipeline processes are killed with SIGKILL at several points of a 2,000-image job; what
the re-runs send is measured with the local server's instance counter.
"""
import csv
import glob
import io
import json
import os
import signal
import subprocess
import sys
import time

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from core.paths import parts_dir
from core.records import dead_letter, prediction_record, prediction_schema, utc_now
from pipeline.config import new_run_id
from pipeline.graph import build_pipeline, in_columns
from pipeline.run import parse, run
from tests.helpers import (assert_accounted, exactly_once, labelled_images, LOCAL_RUNNER,
                           read_predictions, ROOT)
from transforms.commit import CommitParts, DeleteParts, list_folder, read_parquet_part

LABELS = ["red", "green", "blue", "yellow"]
JOB_IMAGES = 2000
SMALL_JOB = 400
WAIT_S = 120
KILL_POLL_S = 0.01


def part_rows(out):
    """Rows of every committed prediction part under an output prefix, from all runs."""
    rows = []
    for path in sorted(glob.glob(f"{out}-*.parts/*.parquet.part")):
        rows.extend(read_parquet_part(path))
    return rows


def committed_rows(out):
    """How many rows the prediction parts under `out` hold (from their footers)."""
    return sum(pq.read_metadata(path).num_rows
               for path in glob.glob(f"{out}-*.parts/*.parquet.part"))


def shard_keys(out):
    return [r["key"] for r in read_predictions(str(out))]


def all_keys(out):
    """Every key under `out`, committed in a shard or (a killed run's) part."""
    return set(shard_keys(out)) | {r["key"] for r in part_rows(out)}


def job_command(images, endpoint, out, *extra):
    return [sys.executable, "-m", "pipeline.run", "--input", str(images), "--endpoint", endpoint,
            "--output", str(out), "--skip_existing", "--commit_every_s", "0.2",
            "--max_instances_per_request", "4", "--max_concurrent_requests", "4", *extra]


def kill_when(command, ready, what):
    """Start the job, SIGKILL it (and its process group) once `ready()` holds."""
    job = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and job.poll() is None and not ready():
            time.sleep(KILL_POLL_S)
        assert job.poll() is None, f"the job ended before it could be killed ({what})"
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        job.wait(WAIT_S)
    assert job.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    truth = labelled_images(folder, [LABELS[i % 4] for i in range(JOB_IMAGES)],
                            fmt_cycle=("png",), size=(8, 8))
    return folder, sorted(truth)


@pytest.fixture(scope="module")
def subset(images, tmp_path_factory):
    """The first SMALL_JOB images of `images`, hard-linked into a folder of their own."""
    folder = tmp_path_factory.mktemp("subset")
    for path in images[1][:SMALL_JOB]:
        os.link(path, folder / os.path.basename(path))
    return folder, sorted(str(folder / os.path.basename(p)) for p in images[1][:SMALL_JOB])


def test_a_finished_run_leaves_shards_and_no_parts(tmp_path, server, images):
    folder, keys = images
    out = tmp_path / "out" / "pred"
    summary = run(["--input", str(folder), "--endpoint", server.endpoint("mlengine"),
                   "--output", str(out), "--output_format", "both",
                   "--commit_every_records", "300", "--max_instances_per_request", "16"])
    assert_accounted(summary)
    assert summary["predicted"] == JOB_IMAGES
    assert summary["parts_committed"] >= JOB_IMAGES // 300
    assert glob.glob(f"{out}-*.parts") == []
    for fmt in ("parquet", "jsonl"):
        rows = read_predictions(str(out), fmt)
        assert exactly_once(r["key"] for r in rows) == {}
        assert sorted(r["key"] for r in rows) == keys
    assert os.path.exists(f"{out}.schema.json") and summary["bq_load"]


def test_kill_at_half_way_then_the_same_command_makes_the_job_whole(tmp_path, make_server,
                                                                    images):
    """2,000 images, SIGKILL once the server answered half: the parts hold what was answered
    (less at most a few commit intervals). The same command at once (the killed run's owner
    file says its process is gone) sends the rest plus at most 10 %, and its own shards hold
    every key exactly once: nothing is left in `.parts`."""
    folder, keys = images
    out = tmp_path / "out" / "pred"
    slow = make_server(latency_ms=20)
    kill_when(job_command(folder, slow.endpoint("mlengine"), out),
              lambda: slow.stats()["instances"] >= JOB_IMAGES // 2, "mid-predict")
    answered = slow.stats()["instances"]
    committed = [r["key"] for r in part_rows(out)]
    assert exactly_once(committed) == {}
    assert set(committed) <= set(keys)
    assert len(committed) >= answered - JOB_IMAGES // 10, (len(committed), answered)
    assert shard_keys(out) == []  # nothing was finished, so no shard
    slow.reset_stats()
    resumed = run(job_command(folder, slow.endpoint("mlengine"), out)[3:])
    assert_accounted(resumed)
    resent = slow.stats()["instances"]
    assert resent <= JOB_IMAGES - answered + JOB_IMAGES // 10, (answered, resent)
    assert resumed["predicted"] == resent
    assert resumed["skipped_by_reason"] == {"existing": len(committed)}
    assert resumed["adopted"] == len(committed) and "not_adopted" not in resumed
    assert sorted(shard_keys(out)) == keys  # this run's shards: every key, each once
    assert glob.glob(f"{out}-*.parts") == []


@pytest.mark.parametrize("point", ["listing", "final-write"])
def test_kill_at_another_point_then_rerun(tmp_path, make_server, subset, point):
    folder, keys = subset
    out = tmp_path / "out" / "pred"
    slow = make_server(latency_ms=20)
    ready = {
        "listing": lambda: glob.glob(str(tmp_path / "out" / "*.schema.json")),
        "final-write": lambda: (slow.stats()["instances"] >= len(keys)
                                and committed_rows(out) == len(keys)),
    }[point]
    kill_when(job_command(folder, slow.endpoint("mlengine"), out), ready, point)
    answered = slow.stats()["instances"]
    slow.reset_stats()
    resumed = run(job_command(folder, slow.endpoint("mlengine"), out,
                              "--parts_stale_after_s", "0")[3:])
    assert_accounted(resumed)
    assert slow.stats()["instances"] <= len(keys) - answered + len(keys) // 10
    # the killed run's parts were adopted: the shards alone hold every key once
    assert sorted(shard_keys(out)) == keys
    assert glob.glob(f"{out}-*.parts") == []


def test_a_killed_multi_process_run_is_adopted_at_once(tmp_path, make_server, subset):
    """DirectRunner multi_processing: the launcher and its worker processes (one process
    group) killed; the same command at once knows the group is gone and adopts its parts."""
    folder, keys = subset
    out = tmp_path / "out" / "pred"
    slow = make_server(latency_ms=50)
    flags = ("--commit_every_s", "0.05", "--direct_running_mode", "multi_processing",
             "--direct_num_workers", "2")
    kill_when(job_command(folder, slow.endpoint("mlengine"), out, *flags),
              lambda: committed_rows(out) >= len(keys) // 4, "a quarter committed")
    committed = {r["key"] for r in part_rows(out)}
    resumed = run(job_command(folder, slow.endpoint("mlengine"), out)[3:])
    assert_accounted(resumed)
    assert resumed["adopted"] == len(committed) > 0 and "not_adopted" not in resumed
    assert sorted(shard_keys(out)) == keys
    assert glob.glob(f"{out}-*.parts") == []


def test_several_crashes_in_a_row_then_one_finish(tmp_path, make_server, subset):
    folder, keys = subset
    out = tmp_path / "out" / "pred"
    slow = make_server(latency_ms=50)
    total_sent = 0
    for _ in range(2):  # killed after a quarter of the job, twice
        slow.reset_stats()
        kill_when(job_command(folder, slow.endpoint("mlengine"), out, "--commit_every_s", "0.05"),
                  lambda: slow.stats()["instances"] >= len(keys) // 4, "a quarter")
        total_sent += slow.stats()["instances"]
    assert len(glob.glob(f"{out}-*.parts")) == 2
    slow.reset_stats()
    finished = run(job_command(folder, slow.endpoint("mlengine"), out,
                               "--parts_stale_after_s", "0")[3:])
    total_sent += slow.stats()["instances"]
    assert_accounted(finished)
    assert total_sent <= len(keys) + 2 * (len(keys) // 10)  # each kill may lose 10 %
    assert finished["adopted"] == finished["skipped"] > 0
    assert sorted(shard_keys(out)) == keys
    assert glob.glob(f"{out}-*.parts") == []


def test_parts_adopted_after_a_kill_keep_their_passthrough_columns(tmp_path, make_server,
                                                                  subset):
    folder, keys = subset
    rows = tmp_path / "rows.csv"
    with open(rows, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["uri", "customer"])
        writer.writerows([key, f"c-{os.path.basename(key)}"] for key in keys)
    out = tmp_path / "out" / "pred"
    slow = make_server(latency_ms=50)
    flags = ("--passthrough_fields", "customer", "--commit_every_s", "0.05")
    kill_when(job_command(rows, slow.endpoint("mlengine"), out, *flags),
              lambda: committed_rows(out) >= len(keys) // 4, "a quarter committed")
    committed = part_rows(out)
    assert [r["key"] for r in committed if r.get("customer") !=
            f"c-{os.path.basename(r['key'])}"] == []
    resumed = run(job_command(rows, slow.endpoint("mlengine"), out, *flags,
                              "--parts_stale_after_s", "0")[3:])
    assert_accounted(resumed)
    assert resumed["adopted"] == len(committed) > 0
    written = read_predictions(str(out))
    assert sorted(r["key"] for r in written) == keys
    assert [r["key"] for r in written if r["customer"] !=
            f"c-{os.path.basename(r['key'])}"] == []


def test_adopted_rows_take_this_runs_columns():
    [record] = records(["k"])
    row = {**record, "customer": "acme", "region": "eu"}  # a part of a run with other flags
    adopted = in_columns(row, prediction_schema(("customer", "batch")).names)
    assert adopted == {**record, "customer": "acme", "batch": None}
    assert list(adopted) == prediction_schema(("customer", "batch")).names


def records(keys):
    now = utc_now()
    return [prediction_record(k, [("red", 0.9), ("blue", 0.1)], "m", now) for k in keys]


def commit(folder, rows, max_records):
    with TestPipeline(runner=LOCAL_RUNNER) as p:
        _ = (p | beam.Create(rows, reshuffle=False)
             | CommitParts(folder, prediction_schema(), max_records=max_records))


def test_two_committed_attempts_of_one_bundle_are_adopted_once(tmp_path, server, images):
    """A killed run whose bundle was retried: both attempts committed the same keys, and a
    shard of a finished run already holds some of them."""
    folder, keys = images
    out = tmp_path / "out" / "pred"
    dead = parts_dir(f"{out}-{new_run_id()}")
    commit(dead, records(keys[:600]), max_records=250)  # attempt 1
    commit(dead, records(keys[:600]), max_records=250)  # attempt 2, other part names
    assert len(list_folder(dead)) == 6
    finished = run(["--input", str(folder), "--endpoint", server.endpoint("mlengine"),
                    "--output", str(out), "--skip_existing", "--parts_stale_after_s", "0"])
    assert_accounted(finished)
    assert finished["skipped"] == 600 and finished["predicted"] == JOB_IMAGES - 600
    assert finished["adopted"] == 600
    assert sorted(shard_keys(out)) == keys
    assert not os.path.exists(dead)


def test_live_runs_are_left_alone_and_finished_leftovers_are_removed(tmp_path, server, images):
    folder, keys = images
    out = tmp_path / "out" / "pred"
    live = parts_dir(f"{out}-{new_run_id()}")
    commit(live, records(keys[:10]), max_records=100)
    finished_id = new_run_id()
    leftover = parts_dir(f"{out}-{finished_id}")
    commit(leftover, records(keys[10:20]), max_records=100)
    with open(f"{out}-{finished_id}-summary.json", "w") as f:
        json.dump({"run_id": finished_id}, f)
    temp = tmp_path / "out" / f"beam-temp-pred-{finished_id}-{'0' * 32}"
    temp.mkdir()
    (temp / "x.parquet").write_bytes(b"half a shard")
    summary = run(["--input", str(folder), "--endpoint", server.endpoint("mlengine"),
                   "--output", str(out), "--skip_existing"])
    assert sorted(summary["cleaned_up"]) == sorted([leftover, str(temp)])
    assert not os.path.exists(leftover) and not temp.exists()
    assert len(list_folder(live)) == 1  # recent, no summary: may still be running
    assert summary["skipped"] == 10  # the live run's committed keys are not sent again


# -- gs:// against gcp-storage-emulator ----------------------------------------------------


def gcs_rows(bucket, prefix, suffix):
    rows = []
    for blob in bucket.client.list_blobs(bucket.name, prefix=prefix):
        if blob.name.endswith(suffix):
            rows.extend(pq.read_table(io.BytesIO(blob.download_as_bytes())).to_pylist())
    return rows


def test_gcs_output_survives_kill_and_resumes_exactly_once(tmp_path, make_server, gcs, images):
    """The 2,000-image job of the local test, killed half way, with its outputs on gs://."""
    folder, keys = images
    out = f"gs://{gcs.name}/runs/pred"
    slow = make_server(latency_ms=20)
    kill_when(job_command(folder, slow.endpoint("mlengine"), out),
              lambda: slow.stats()["instances"] >= len(keys) // 2, "mid-predict on gs://")
    answered = slow.stats()["instances"]
    committed = [r["key"] for r in gcs_rows(gcs, "runs/pred-", ".parquet.part")]
    assert exactly_once(committed) == {}
    assert len(committed) >= answered - len(keys) // 10
    assert gcs_rows(gcs, "runs/pred-", ".parquet") == []
    slow.reset_stats()
    resumed = run(job_command(folder, slow.endpoint("mlengine"), out)[3:])  # at once
    assert_accounted(resumed)
    assert slow.stats()["instances"] <= len(keys) - answered + len(keys) // 10
    assert resumed["adopted"] == len(committed)
    shards = [r["key"] for r in gcs_rows(gcs, "runs/pred-", ".parquet")]
    assert sorted(shards) == keys
    assert gcs_rows(gcs, "runs/pred-", ".parquet.part") == []


def make_folder(path, files):
    os.makedirs(path)
    for name in files:
        with open(os.path.join(path, name), "w") as f:
            f.write("x")
    return str(path)


def test_delete_parts_removes_its_folders_once_its_inputs_are_done(tmp_path):
    folders = [make_folder(tmp_path / "a.parts", ["part-1", "part-2"]),
               make_folder(tmp_path / "b.parts", ["part-3"])]
    with TestPipeline(runner=LOCAL_RUNNER) as p:
        shards = p | "Shards" >> beam.Create(["s-00000-of-00002", "s-00001-of-00002"])
        parts = p | "Parts" >> beam.Create(["part-1", "part-2", "part-3"])
        assert_that((shards, parts) | DeleteParts(folders), equal_to([2, 1]))
    assert not any(os.path.exists(folder) for folder in folders)


def test_delete_parts_runs_when_its_inputs_are_empty(tmp_path):
    folder = make_folder(tmp_path / "a.parts", ["part-1"])
    with TestPipeline(runner=LOCAL_RUNNER) as p:
        empty = p | beam.Create([])
        assert_that((empty,) | DeleteParts([folder]), equal_to([1]))
    assert not os.path.exists(folder)


def job_steps(tmp_path, *flags):
    options, config = parse(["--input", str(tmp_path), "--endpoint",
                             "http://127.0.0.1:9/v1/m:predict", "--output",
                             str(tmp_path / "pred"), *flags])
    p = beam.Pipeline(runner=LOCAL_RUNNER, options=PipelineOptions([]))
    build_pipeline(p, config)
    transforms = p.to_runner_api().components.transforms.values()
    return sum(1 for t in transforms if not t.subtransforms)


def test_incremental_commits_add_few_steps_to_the_job(tmp_path):
    """Every step costs each run its construction, translation and stage set-up (the
    throughput benchmark's commits case measures the time): the commits add two writers and
    one deleting step, waiting on the sinks through one side input."""
    added = job_steps(tmp_path) - job_steps(tmp_path, "--commit_every_records", "0")
    assert added <= 8, added


@pytest.mark.parametrize("schema", [prediction_schema(("customer",)), None])
def test_committed_parts_hold_every_record_once_across_chunks(tmp_path, schema):
    now = utc_now()
    records = [prediction_record(f"k{i:05d}", [("cat", i / 3000)], "m", now)
               | {"customer": f"c{i}"} if schema else dead_letter(f"k{i:05d}", "decode", "bad")
               for i in range(2500)]
    folder = str(tmp_path / "parts")
    with TestPipeline(runner=LOCAL_RUNNER) as p:
        _ = (p | beam.Create(records, reshuffle=False)
             | CommitParts(folder, schema, max_records=2000, max_seconds=3600))
    rows = [row for path in glob.glob(f"{folder}/*")
            for row in (read_parquet_part(path) if schema else
                        (json.loads(line) for line in open(path, encoding="utf-8")))]
    field = "customer" if schema else "error"
    assert sorted((r["key"], r[field]) for r in rows) == [(r["key"], r[field]) for r in records]


def test_a_part_is_committed_at_least_every_ten_seconds_by_default(tmp_path):
    """The default bounds what a kill loses to 10 s of each writer's predictions
    (benchmarks/commit_interval.py weighs it against the parts it makes)."""
    _, config = parse(["--input", str(tmp_path), "--endpoint",
                       "http://127.0.0.1:9/v1/m:predict", "--output", str(tmp_path / "p")])
    assert config.commit_seconds == 10.0 and config.commit_records == 10_000
