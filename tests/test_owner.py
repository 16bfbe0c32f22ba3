"""A re-run tells at once that a killed run is gone, from the owner file beside its parts:
its process no longer exists, or its id belongs to a later process; a run it cannot judge (on
another host, on Dataflow) is left to the staleness rule. Real processes, no fakes."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import types

import pytest

from core.paths import parts_dir
from pipeline.config import new_run_id
from pipeline.earlier_runs import adopt_command, plan_leftovers
from pipeline.owner import (ELSEWHERE, IN_PROCESS, IN_PROCESS_GROUP, Liveness, liveness,
                            owner_path, process_stat, read_owner, running_here, this_process,
                            write_owner)
from pipeline.run import main
from tests.helpers import assert_accounted, labelled_images, read_predictions
from tests.test_crashsafe import commit, records

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="Linux /proc")
WAIT_S = 30


@pytest.fixture
def sleeper():
    """A real process of its own process group, that the test can end."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                               start_new_session=True)
    yield process
    if process.poll() is None:
        process.kill()
    process.wait(WAIT_S)


def owner_for(process, job_lives_in=IN_PROCESS):
    here = this_process("DirectRunner", job_lives_in)
    return dataclasses.replace(here, pid=process.pid, process_group=process.pid,
                               started=process_stat(process.pid).started)


def test_a_running_process_is_alive_and_an_ended_one_gone(sleeper):
    here = this_process("DirectRunner", IN_PROCESS)
    owner = owner_for(sleeper)
    assert liveness(owner, here)[0] is Liveness.ALIVE
    sleeper.kill()
    sleeper.wait(WAIT_S)
    state, why = liveness(owner, here)
    assert state is Liveness.GONE and "no longer exists" in why


def test_a_process_id_now_used_by_a_later_process_is_gone(sleeper):
    owner = dataclasses.replace(owner_for(sleeper), started=owner_for(sleeper).started - 1)
    state, why = liveness(owner, this_process("DirectRunner", IN_PROCESS))
    assert state is Liveness.GONE and "later process" in why


LAUNCHER_WITH_A_WORKER = """
import subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(worker.pid, flush=True)
time.sleep(120)
"""


def test_a_group_is_alive_while_one_of_its_workers_runs():
    """DirectRunner multi_processing: the launcher died, a worker of its group lives on."""
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER_WITH_A_WORKER],
                                stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        worker = int(launcher.stdout.readline())
        owner = owner_for(launcher, IN_PROCESS_GROUP)
        launcher.kill()
        launcher.wait(WAIT_S)
        here = this_process("DirectRunner", IN_PROCESS)
        state, why = liveness(owner, here)
        assert state is Liveness.ALIVE and str(worker) in why
        os.kill(worker, signal.SIGKILL)
        for _ in range(100):  # the worker is reaped by init once it is killed
            if liveness(owner, here)[0] is Liveness.GONE:
                break
            time.sleep(0.05)
        assert liveness(owner, here)[0] is Liveness.GONE
    finally:
        os.killpg(launcher.pid, signal.SIGKILL) if _group_alive(launcher.pid) else None
        launcher.wait(WAIT_S)


def _group_alive(group):
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def test_runs_elsewhere_cannot_be_judged_from_here(sleeper):
    here = this_process("DirectRunner", IN_PROCESS)
    owner = owner_for(sleeper)
    sleeper.kill()
    sleeper.wait(WAIT_S)
    assert liveness(owner, here)[0] is Liveness.GONE
    other_host = dataclasses.replace(owner, host=here.host + "-other")
    assert liveness(other_host, here)[0] is Liveness.UNKNOWN
    dataflow = dataclasses.replace(owner, runner="DataflowRunner",
                                   job_lives_in=ELSEWHERE, job_id="2026-12-06_1", region="r1")
    state, why = liveness(dataflow, here)
    assert state is Liveness.UNKNOWN and "gcloud dataflow jobs describe 2026-12-06_1" in why
    other_namespace = dataclasses.replace(owner, pid_namespace="pid:[1]")
    assert liveness(other_namespace, here)[0] is Liveness.UNKNOWN


def test_the_owner_file_round_trips_and_a_torn_one_is_ignored(tmp_path):
    owner = dataclasses.replace(this_process("DataflowRunner", ELSEWHERE), job_id="j")
    write_owner(str(tmp_path / "a.parts"), owner)
    assert read_owner(owner_path(str(tmp_path / "a.parts"))) == owner
    (tmp_path / "torn.json").write_text('{"host": "h", "pi')
    assert read_owner(str(tmp_path / "torn.json")) is None


def dead_or_live_run(out, process, keys):
    folder = parts_dir(f"{out}-{new_run_id()}")
    commit(folder, records(keys), max_records=100)
    write_owner(folder, owner_for(process))
    return folder


def test_a_gone_runs_parts_are_adopted_at_once_and_a_live_ones_kept(tmp_path, sleeper):
    out = str(tmp_path / "out" / "pred")
    folder = dead_or_live_run(out, sleeper, [f"k{i}" for i in range(10)])
    here = this_process("DirectRunner", IN_PROCESS)
    plan = plan_leftovers(out, out + "-errors", new_run_id(), adopt=True, here=here)
    assert plan.adopt_parts == () and len(plan.not_adopted) == 1
    assert plan.not_adopted[0].predictions == 10 and "still running" in plan.not_adopted[0].why
    sleeper.kill()
    sleeper.wait(WAIT_S)
    plan = plan_leftovers(out, out + "-errors", new_run_id(), adopt=True, here=here)
    assert len(plan.adopt_parts) == 1 and plan.adopt_folders == (folder,)
    assert plan.not_adopted == () and plan.kept_live == ()
    # without the owner file only the staleness rule (an hour) could tell
    os.remove(owner_path(folder))
    plan = plan_leftovers(out, out + "-errors", new_run_id(), adopt=True, here=here)
    assert plan.adopt_parts == () and plan.not_adopted[0].predictions == 10


def test_a_gone_run_that_committed_nothing_leaves_nothing(tmp_path, sleeper):
    out = str(tmp_path / "out" / "pred")
    folder = parts_dir(f"{out}-{new_run_id()}")
    write_owner(folder, owner_for(sleeper))
    sleeper.kill()
    sleeper.wait(WAIT_S)
    plan = plan_leftovers(out, out + "-errors", new_run_id(), adopt=False,
                          here=this_process("DirectRunner", IN_PROCESS))
    assert plan.removed == (folder,) and not os.path.exists(folder)


def test_the_adopting_command_is_the_same_command_with_no_wait():
    assert adopt_command("batch-predict", ["--input", "a b", "--skip_existing"]) == (
        "batch-predict --input 'a b' --skip_existing --parts_stale_after_s 0")
    assert adopt_command("python -m pipeline.run", [
        "--parts_stale_after_s", "60", "--output", "o", "--parts_stale_after_s=5"]) == (
        "python -m pipeline.run --output o --parts_stale_after_s 0")


def test_a_rerun_beside_a_live_run_says_what_it_left_out(tmp_path, server, sleeper, capsys):
    images = tmp_path / "images"
    keys = sorted(labelled_images(images, ["red", "blue"] * 10, fmt_cycle=("png",),
                                  size=(8, 8)))
    out = tmp_path / "out" / "pred"
    folder = dead_or_live_run(out, sleeper, keys[:10])
    argv = ["--input", str(images), "--endpoint", server.endpoint("mlengine"),
            "--output", str(out), "--skip_existing"]
    assert main(argv) == 0
    printed = capsys.readouterr()
    summary = json.loads(printed.out)
    assert_accounted(summary)
    assert summary["skipped"] == 10 and summary["adopted"] == 0
    assert summary["not_adopted"]["predictions"] == 10
    [(run_id, why)] = summary["not_adopted"]["runs"].items()
    assert folder.endswith(f"{run_id}.parts") and why["predictions"] == 10
    command = adopt_command("python -m pipeline.run", argv)
    assert command in printed.err
    sleeper.kill()  # the live run ends: the printed command adopts its parts
    sleeper.wait(WAIT_S)
    assert main(argv + ["--parts_stale_after_s", "0"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["adopted"] == 10 and "not_adopted" not in summary
    assert sorted(r["key"] for r in read_predictions(str(out))) == keys
    assert not os.path.exists(folder)


def test_a_dataflow_run_records_its_job_id_and_region_once_submitted(tmp_path):
    """The launcher writes the owner file at start; the job id is known after submission."""
    from apache_beam.runners.dataflow.dataflow_runner import DataflowPipelineResult
    from pipeline.preflight import owner_of, record_job, record_owner
    from pipeline.run import parse
    options, config = parse([
        "--input", str(tmp_path), "--endpoint", "http://127.0.0.1:9/v1/m:predict",
        "--output", str(tmp_path / "pred"), "--runner", "DataflowRunner", "--project", "p",
        "--region", "europe-west1", "--temp_location", "gs://b/tmp",
        "--max_num_workers", "2", "--machine_type", "n2-standard-2"])
    owner = owner_of(config, options)
    assert owner.job_lives_in == ELSEWHERE and owner.region == "europe-west1"
    record_owner(config, owner)
    path = owner_path(parts_dir(config.output_run_prefix))
    assert read_owner(path).job_id is None
    submitted = DataflowPipelineResult(types.SimpleNamespace(id="2026-12-06_01_02_03-42"), None)
    record_job(config, owner, submitted)
    recorded = read_owner(path)
    assert (recorded.job_id, recorded.region, recorded.runner) == (
        "2026-12-06_01_02_03-42", "europe-west1", "DataflowRunner")
    state, why = liveness(recorded, this_process("DirectRunner", IN_PROCESS))
    assert state is Liveness.UNKNOWN and "2026-12-06_01_02_03-42" in why


def test_a_run_this_same_process_launched_is_alive_only_while_it_runs():
    """A notebook or an orchestrator may run one job after another in one process."""
    here = this_process("DirectRunner", IN_PROCESS)
    owner = dataclasses.replace(here, run_id="20261206T100000Z-abc")
    with running_here(owner.run_id):
        assert liveness(owner, here)[0] is Liveness.ALIVE
    state, why = liveness(owner, here)
    assert state is Liveness.GONE and "this process" in why


def test_a_live_runs_predictions_are_counted_on_gcs(gcs, sleeper):
    """The owner file and the parts' footers read through Beam's gs:// filesystem."""
    out = f"gs://{gcs.name}/runs/pred"
    dead_or_live_run(out, sleeper, [f"k{i}" for i in range(250)])
    here = this_process("DirectRunner", IN_PROCESS)
    plan = plan_leftovers(out, out + "-errors", new_run_id(), adopt=True, here=here)
    [kept] = plan.not_adopted
    assert kept.predictions == 250 and "still running" in kept.why
    sleeper.kill()
    sleeper.wait(WAIT_S)
    plan = plan_leftovers(out, out + "-errors", new_run_id(), adopt=True, here=here)
    assert len(plan.adopt_parts) == 3 and plan.not_adopted == ()


def test_without_proc_only_a_process_id_no_longer_in_use_tells(sleeper):
    """Where /proc cannot be read (macOS), a live id may be a later process: unknown."""
    here = dataclasses.replace(this_process("DirectRunner", IN_PROCESS), pid_namespace=None)
    owner = dataclasses.replace(owner_for(sleeper), pid_namespace=None, started=None)
    assert liveness(owner, here)[0] is Liveness.UNKNOWN
    sleeper.kill()
    sleeper.wait(WAIT_S)
    assert liveness(owner, here)[0] is Liveness.GONE


def test_a_gone_runs_empty_temp_folders_are_removed_too(tmp_path, sleeper):
    """Beam's sinks make `beam-temp-*` folders before they write; a kill can leave them empty."""
    out = str(tmp_path / "out" / "pred")
    run_id = new_run_id()
    folder = parts_dir(f"{out}-{run_id}")
    write_owner(folder, owner_for(sleeper))
    empty = [tmp_path / "out" / f"beam-temp-pred-{run_id}-{'a' * 32}",
             tmp_path / "out" / f"beam-temp-pred-errors-{run_id}-{'b' * 32}"]
    for temp in empty:
        temp.mkdir()
    sleeper.kill()
    sleeper.wait(WAIT_S)
    plan = plan_leftovers(out, out + "-errors", new_run_id(), adopt=False,
                          here=this_process("DirectRunner", IN_PROCESS))
    assert not any(temp.exists() for temp in empty)
    assert {str(temp) for temp in empty} <= set(plan.removed)
