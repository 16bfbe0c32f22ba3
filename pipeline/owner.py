"""Who runs a job, written beside its parts, so that a re-run can tell a dead run at once.

`<output>-<run_id>.parts/owner.json` is written by the launcher when the job starts (and again
with the Dataflow job id and region once the runner returns them). It names the host, the
launcher's process id and that process's start time, and where the job runs:

- `process`: the whole job runs in the launcher process (DirectRunner with one process);
- `process_group`: in the launcher and worker processes of its process group (DirectRunner
  multi_processing);
- `elsewhere`: on a service or in another process the launcher does not own (Dataflow, Prism
  and other portable runners, a template launch).

A later run on the same host (and in the same process-id namespace) can then say that the run
is gone: its process no longer exists, or its id now belongs to a process started later, and
(for `process_group`) no process of its group is left; or that it is alive: its process still
runs (a process that runs jobs one after another knows which one it runs now). Everything
else is unknown, and the staleness rule of `pipeline.earlier_runs` decides. Linux reads `/proc`; elsewhere only a
process id that no longer exists (`kill(pid, 0)`) tells a run is gone.
"""
import contextlib
import dataclasses
import enum
import json
import os
import socket
from typing import Iterator, NamedTuple, Optional, Set, Tuple

from apache_beam.io.filesystems import FileSystems

from transforms.commit import write_bytes_atomically

OWNER_FILE = "owner.json"
IN_PROCESS = "process"
IN_PROCESS_GROUP = "process_group"
ELSEWHERE = "elsewhere"
_PROC = "/proc"


@dataclasses.dataclass(frozen=True)
class Owner:
    """Who runs a job (see module doc)."""
    host: str
    pid: int
    runner: str
    job_lives_in: str  # IN_PROCESS, IN_PROCESS_GROUP or ELSEWHERE
    process_group: Optional[int] = None
    started: Optional[int] = None  # the launcher's start, clock ticks after boot (Linux)
    boot_id: Optional[str] = None
    pid_namespace: Optional[str] = None
    job_id: Optional[str] = None  # a Dataflow job's id, once the runner returns it
    region: Optional[str] = None
    run_id: Optional[str] = None


class Liveness(enum.Enum):
    GONE = "gone"
    ALIVE = "alive"
    UNKNOWN = "unknown"


class ProcStat(NamedTuple):
    state: str
    parent: int
    group: int
    started: int  # clock ticks after boot


def owner_path(parts_folder: str) -> str:
    return f"{parts_folder}/{OWNER_FILE}"


# -- this process ---------------------------------------------------------------------------

def _read_text(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None


def process_stat(pid) -> Optional[ProcStat]:
    """A process's `/proc/<pid>/stat`; None when there is no such process or no `/proc`."""
    text = _read_text(f"{_PROC}/{pid}/stat")
    if not text or ")" not in text:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the name, in brackets, may hold spaces
    try:
        return ProcStat(fields[0], int(fields[1]), int(fields[2]), int(fields[19]))
    except (IndexError, ValueError):
        return None


def _pid_namespace() -> Optional[str]:
    try:
        return os.readlink(f"{_PROC}/self/ns/pid")
    except OSError:
        return None


#: Run ids whose jobs this process is running now (a process may run several jobs, one
#: after another: a notebook, a test, an orchestrator calling `pipeline.run.run`).
_RUNNING_HERE: Set[str] = set()


@contextlib.contextmanager
def running_here(run_id: str):
    """Marks a job this process runs, while it runs."""
    _RUNNING_HERE.add(run_id)
    try:
        yield
    finally:
        _RUNNING_HERE.discard(run_id)


def this_process(runner: str, job_lives_in: str, run_id: Optional[str] = None) -> Owner:
    """The owner record of a job this process launches."""
    stat = process_stat(os.getpid())
    return Owner(host=socket.gethostname(), pid=os.getpid(), run_id=run_id, runner=runner,
                 job_lives_in=job_lives_in, process_group=os.getpgrp(),
                 started=stat.started if stat else None,
                 boot_id=_read_text(f"{_PROC}/sys/kernel/random/boot_id"),
                 pid_namespace=_pid_namespace())


def where_job_lives(runner: str, local: bool, single_process: bool,
                    template: bool) -> str:
    if template or not local or "prism" in runner.lower():
        return ELSEWHERE
    return IN_PROCESS if single_process else IN_PROCESS_GROUP


# -- the owner file -------------------------------------------------------------------------

def write_owner(parts_folder: str, owner: Owner):
    data = json.dumps(dataclasses.asdict(owner), indent=1) + "\n"
    write_bytes_atomically(owner_path(parts_folder), data.encode("utf-8"))


def read_owner(path: str) -> Optional[Owner]:
    """The owner record at `path`; None when it cannot be read (then staleness decides)."""
    try:
        with FileSystems.open(path) as f:
            fields = json.loads(f.read().decode("utf-8"))
        return Owner(**{name: fields.get(name) for name in Owner.__dataclass_fields__})
    except Exception:  # a torn or foreign file, or Beam's filesystems' many error types
        return None


# -- is it gone? ----------------------------------------------------------------------------

def _is_live(stat: Optional[ProcStat]) -> bool:
    return stat is not None and stat.state not in ("Z", "X")  # zombie or dead: gone


def _this_process_and_ancestors() -> Set[int]:
    """This process and those that started it (a wrapper script may share the killed
    run's process group, and is not part of that run)."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids and len(pids) < 1000:
        pids.add(pid)
        stat = process_stat(pid)
        pid = stat.parent if stat else 0
    return pids


def _group_members(group: int) -> Iterator[int]:
    """Live processes of a process group (Linux), other than this one and its ancestors."""
    try:
        names = os.listdir(_PROC)
    except OSError:
        return
    ours = _this_process_and_ancestors()
    for name in names:
        if name.isdigit() and int(name) not in ours:
            stat = process_stat(name)
            if _is_live(stat) and stat.group == group:
                yield int(name)


def _exists(pid: int) -> bool:
    """Whether a process id is in use, where `/proc` cannot say."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists, owned by someone else
    return True


def liveness(owner: Owner, here: Owner) -> Tuple[Liveness, str]:
    """Whether the run `owner` describes is gone, as far as this process (`here`) can tell,
    and why, in words for a log line."""
    where = f"host {owner.host}, process {owner.pid}"
    if owner.job_lives_in == ELSEWHERE:
        if owner.job_id:
            return Liveness.UNKNOWN, (f"Dataflow job {owner.job_id} (region {owner.region}): "
                                      f"`gcloud dataflow jobs describe {owner.job_id} "
                                      f"--region {owner.region}` tells whether it ended")
        return Liveness.UNKNOWN, f"it runs on {owner.runner} (launched from {where})"
    if owner.host != here.host:
        return Liveness.UNKNOWN, f"it runs on another host ({where})"
    if owner.boot_id and here.boot_id and owner.boot_id != here.boot_id:
        return Liveness.GONE, f"{where}: the host restarted since"
    if owner.pid_namespace != here.pid_namespace:
        return Liveness.UNKNOWN, f"{where} is in another process-id namespace (container)"
    if here.pid_namespace is None:  # no /proc: only a process id no longer in use tells
        if not _exists(owner.pid) and (
                owner.job_lives_in == IN_PROCESS or _group_gone_without_proc(owner)):
            return Liveness.GONE, f"{where} no longer exists"
        return Liveness.UNKNOWN, f"{where} may still be running"
    stat = process_stat(owner.pid)
    if (owner.pid, owner.started) == (here.pid, here.started) and owner.started is not None:
        if owner.run_id in _RUNNING_HERE:
            return Liveness.ALIVE, f"{where} (this process) is running it"
        return Liveness.GONE, f"{where} (this process) is no longer running it"
    if _is_live(stat) and (owner.started is None or stat.started == owner.started):
        return Liveness.ALIVE, f"{where} is still running"
    if owner.job_lives_in == IN_PROCESS_GROUP and owner.process_group is not None:
        left = list(_group_members(owner.process_group))
        if left:
            return Liveness.ALIVE, (f"{where} ended, but processes of its group "
                                    f"{owner.process_group} ({', '.join(map(str, left[:5]))})"
                                    f" are still running")
    if _is_live(stat):
        return Liveness.GONE, f"{where} ended (its id now belongs to a later process)"
    return Liveness.GONE, f"{where} no longer exists"


def _group_gone_without_proc(owner: Owner) -> bool:
    if owner.process_group is None:
        return False
    try:
        os.killpg(owner.process_group, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False
