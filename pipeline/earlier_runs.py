"""What earlier runs left under an output prefix, and what a new run may do with it.

Checked on the launcher before the job starts. An earlier run is:
- finished: its summary file exists (written only after its shards were in place). Its
  leftover parts folders and `beam-temp-*` folders hold nothing the shards lack: removed.
- dead: no summary, and either its owner file (`pipeline.owner`) tells it is gone (its
  process on this host no longer exists), or nothing in its parts or `beam-temp-*` folders
  changed for `stale_after_s` (a live job commits a part at least every `--commit_every_s`
  while it predicts). Its `beam-temp-*` folders are removed; its prediction parts are adopted
  by a `--skip_existing` run (written into this run's shards, then removed), never just
  deleted.
- otherwise possibly live (or known to be alive): left alone. Its parts' keys are still
  skipped by `--skip_existing`, and the plan says how many predictions that leaves out of this
  run's shards (`NotAdopted`).
"""
import concurrent.futures
import dataclasses
import datetime
import glob
import logging
import os
import re
import shlex
import time
from typing import Dict, List, Optional, Sequence, Tuple

import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from core.paths import (DEAD_LETTER_PART_EXTENSION, parts_dir, parts_glob, parts_regex,
                        PARTS_SUFFIX, quote_glob, render_path, RUN_ID_PATTERN, template_glob,
                        template_regex)
from pipeline.owner import Liveness, liveness, OWNER_FILE, Owner, read_owner
from transforms.commit import delete_folder

_LOG = logging.getLogger("batch_predict")

DEFAULT_STALE_AFTER_S = 3600.0


@dataclasses.dataclass
class EarlierRun:
    run_id: str
    output_prefix: str  # `<output>-<run_id>` of that run
    part_files: List[str] = dataclasses.field(default_factory=list)
    temp_folders: List[str] = dataclasses.field(default_factory=list)
    newest: float = 0.0  # last change seen in its parts / temp files, epoch seconds
    owner_file: Optional[str] = None  # `pipeline.owner`: who ran it (runs since it exists)


@dataclasses.dataclass(frozen=True)
class NotAdopted:
    """A run that may still be running: its committed predictions stay out of this run's
    shards (their keys are skipped)."""
    run_id: str
    why: str
    predictions: int  # rows in its prediction parts when this run started (at most)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What this run does with earlier runs' leftovers."""
    adopt_parts: Tuple[str, ...] = ()  # prediction part files written into this run's shards
    adopt_folders: Tuple[str, ...] = ()  # parts folders removed once this run's shards are in
    removed: Tuple[str, ...] = ()  # folders removed before the job started
    kept_live: Tuple[str, ...] = ()  # run ids that may still be running
    not_adopted: Tuple[NotAdopted, ...] = ()  # those of them with committed predictions
    dead: Tuple[Tuple[str, str], ...] = ()  # (run id, why) of unfinished runs taken as dead


def run_date(run_id: str) -> str:
    """The `{date}` a run rendered its paths with (its run id starts with the UTC time)."""
    return datetime.datetime.strptime(run_id[:8], "%Y%m%d").strftime("%Y-%m-%d")


def output_prefix(template: str, run_id: str) -> str:
    """`<output>-<run_id>` of an earlier run (of `--output` or `--errors`)."""
    return render_path(template, run_date(run_id), run_id) + "-" + run_id


def _match(pattern: str):
    return FileSystems.match([pattern])[0].metadata_list


def _temp_regex(template: str) -> str:
    folder, _, base = template.rpartition("/")
    return ("^(" + template_regex(folder) + "/beam-temp-" + template_regex(base)
            + r"(?:-errors)?-(" + RUN_ID_PATTERN + r")-[0-9a-f]{32})/")


def find_earlier_runs(output_template: str) -> Dict[str, EarlierRun]:
    """Every earlier run with parts or `beam-temp-*` files under `output_template`."""
    runs: Dict[str, EarlierRun] = {}
    regex = re.compile(parts_regex(output_template))
    for meta in _match(parts_glob(output_template)):
        found = regex.match(meta.path)
        if not found:
            continue
        run_id = found.group(2)
        run = runs.setdefault(run_id, EarlierRun(run_id, output_prefix(output_template, run_id)))
        run.part_files.append(meta.path)
        run.newest = max(run.newest, meta.last_updated_in_seconds)
    folder, _, base = output_template.rpartition("/")
    temp_regex = re.compile(_temp_regex(output_template))
    for meta in _match(f"{template_glob(folder)}/beam-temp-{template_glob(base)}-*/*"):
        found = temp_regex.match(meta.path)
        if not found:
            continue
        temp_folder, run_id = found.groups()
        run = runs.setdefault(run_id, EarlierRun(run_id, output_prefix(output_template, run_id)))
        if temp_folder not in run.temp_folders:
            run.temp_folders.append(temp_folder)
        run.newest = max(run.newest, meta.last_updated_in_seconds)
    owner_regex = re.compile("^" + template_regex(output_template) + "-(" + RUN_ID_PATTERN
                             + ")" + re.escape(f"{PARTS_SUFFIX}/{OWNER_FILE}") + "$")
    for meta in _match(f"{template_glob(output_template)}-*{PARTS_SUFFIX}/{OWNER_FILE}"):
        found = owner_regex.match(meta.path)
        if not found:
            continue
        run_id = found.group(1)
        run = runs.setdefault(run_id, EarlierRun(run_id, output_prefix(output_template, run_id)))
        run.owner_file = meta.path
        run.newest = max(run.newest, meta.last_updated_in_seconds)
    return runs


def is_finished(run: EarlierRun) -> bool:
    return FileSystems.exists(f"{run.output_prefix}-summary.json")


def judge(run: EarlierRun, here: Optional[Owner], now: float,
          stale_after_s: float) -> Tuple[Liveness, str]:
    """Whether an unfinished run is gone (its owner file says so, or it is stale), alive
    (its owner file says so), or may be running; and why, in words."""
    owner = read_owner(run.owner_file) if run.owner_file and here is not None else None
    state, why = liveness(owner, here) if owner else (Liveness.UNKNOWN, "no owner file")
    if state is not Liveness.UNKNOWN:
        return state, why
    quiet_s = now - run.newest
    if quiet_s >= stale_after_s:
        return Liveness.GONE, f"{why}; nothing changed for {quiet_s:.0f} s"
    return Liveness.UNKNOWN, (f"{why}; its files changed {quiet_s:.0f} s ago, within "
                              f"--parts_stale_after_s {stale_after_s:g}")


def plan_leftovers(output_template: str, errors_template: str, current_run_id: str,
                   adopt: bool, stale_after_s: float = DEFAULT_STALE_AFTER_S,
                   now: Optional[float] = None, here: Optional[Owner] = None) -> Plan:
    """Remove what is safe to remove now; say which parts this run adopts (see module doc).

    `adopt`: this run skips every key found in earlier outputs (--skip_existing), so it can
    write dead runs' parts into its own shards without predicting any of them twice.
    `here`: this process (`pipeline.owner.this_process`), to read owner files against; None
    leaves the staleness rule alone to decide.
    """
    now = time.time() if now is None else now
    adopt_parts, adopt_folders, removed, kept, not_adopted, dead = [], [], [], [], [], []
    for run_id, run in sorted(find_earlier_runs(output_template).items()):
        if run_id == current_run_id:
            continue
        errors_folder = parts_dir(output_prefix(errors_template, run_id))
        temp_folders = _temp_folders(run, output_prefix(errors_template, run_id))
        if is_finished(run):
            for folder in temp_folders + _parts_folders(run, errors_folder):
                delete_folder(folder)
                removed.append(folder)
            continue
        state, why = judge(run, here, now, stale_after_s)
        if state is not Liveness.GONE:
            kept.append(run_id)
            if adopt and run.part_files:
                not_adopted.append(NotAdopted(run_id, why, count_rows(run.part_files)))
            continue
        dead.append((run_id, why))
        for folder in temp_folders:
            delete_folder(folder)
            removed.append(folder)
        if adopt and run.part_files:
            adopt_parts.extend(sorted(run.part_files))
            adopt_folders.extend(_parts_folders(run, errors_folder))
        elif not run.part_files and run.owner_file:  # nothing committed: only its owner file
            folder = parts_dir(run.output_prefix)
            delete_folder(folder)
            removed.append(folder)
    plan = Plan(tuple(adopt_parts), tuple(adopt_folders), tuple(removed), tuple(kept),
                tuple(not_adopted), tuple(dead))
    report(plan)
    return plan


PARALLEL_READS = 16


def _rows_in(path: str) -> int:
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            return pq.read_metadata(f).num_rows
    except Exception:  # an unreadable part: the job counts it as `unreadable_shards`
        return 0


def count_rows(paths: Sequence[str]) -> int:
    """Rows in prediction parts, from their Parquet footers (read a few at a time)."""
    with concurrent.futures.ThreadPoolExecutor(PARALLEL_READS) as pool:
        return sum(pool.map(_rows_in, paths))


def _temp_folders(run: EarlierRun, errors_prefix: str) -> List[str]:
    """A run's `beam-temp-*` folders: those holding files, and (local) the empty ones a
    killed run's sinks made before they wrote."""
    found = set(run.temp_folders)
    for prefix in (run.output_prefix, errors_prefix):
        found.update(own_temp_folders(prefix))
    return sorted(found)


def _parts_folders(run: EarlierRun, errors_folder: str) -> List[str]:
    folders = [parts_dir(run.output_prefix)] if run.part_files or run.owner_file else []
    if _match(f"{quote_glob(errors_folder)}/*.{DEAD_LETTER_PART_EXTENSION}"):
        folders.append(errors_folder)
    return folders


def report(plan: Plan):
    for folder in plan.removed:
        _LOG.info("removed what an earlier run left: %s", folder)
    if plan.adopt_parts:
        _LOG.info("adopting %d committed parts of killed runs (%s); they are removed once "
                  "this run's shards are in place", len(plan.adopt_parts),
                  ", ".join(plan.adopt_folders))
    for run_id, why in plan.dead:
        _LOG.info("run %s did not finish and is gone (%s)", run_id, why)
    waiting = {item.run_id: item for item in plan.not_adopted}
    for run_id in plan.kept_live:
        item = waiting.get(run_id)
        if item is None:
            _LOG.info("run %s may still be running: its files are left alone", run_id)
        else:
            _LOG.warning("run %s may still be running (%s): its %d committed predictions are "
                         "skipped and left out of this run's shards", run_id, item.why,
                         item.predictions)


def not_adopted_summary(plan: Plan) -> Optional[dict]:
    """The summary's `not_adopted`: committed predictions this run's shards leave out."""
    if not plan.not_adopted:
        return None
    return {"predictions": sum(item.predictions for item in plan.not_adopted),
            "runs": {item.run_id: {"predictions": item.predictions, "why": item.why}
                     for item in plan.not_adopted}}


STALE_FLAG = "--parts_stale_after_s"


def adopt_command(program: str, argv: Sequence[str]) -> str:
    """The same command with `--parts_stale_after_s 0`: it adopts every unfinished run's
    parts (to run once those runs are known to be finished)."""
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == STALE_FLAG:
            skip = True
            continue
        if not arg.startswith(STALE_FLAG + "="):
            args.append(arg)
    return shlex.join([*shlex.split(program), *args, STALE_FLAG, "0"])


def own_temp_folders(run_prefix: str) -> List[str]:
    """The `beam-temp-*` folders Beam's file sinks made for the shards of one run prefix
    (`<output>-<run_id>` or `<errors>-<run_id>`), empty ones included where the filesystem
    has folders."""
    folder, _, base = run_prefix.rpartition("/")
    pattern = f"{quote_glob(folder)}/beam-temp-{quote_glob(base)}-*"
    found = {m.path.rpartition("/")[0] for m in _match(pattern + "/*")}
    if FileSystems.get_scheme(run_prefix) in (None, "file"):
        found.update(p for p in glob.glob(pattern) if os.path.isdir(p))
    regex = re.compile(re.escape(f"{folder}/beam-temp-{base}-") + "[0-9a-f]{32}")
    return sorted(path for path in found if regex.fullmatch(path))


def remove_own_temp_folders(run_prefixes: Sequence[str]) -> List[str]:
    """On an interrupted run's way out: remove the `beam-temp-*` folders it made."""
    removed = []
    for prefix in run_prefixes:
        for temp in own_temp_folders(prefix):
            delete_folder(temp)
            removed.append(temp)
    return removed
