"""Loads the daily DAG with the Airflow of this interpreter and renders its task for one
scheduled run, the way a worker would, offline: no database server, no network, no credentials.

For the run the scheduler starts at RUN_STARTS (the data interval comes from the DAG's own
timetable, as the scheduler computes it) it checks that
- the DAG file imports with no error,
- the operator keeps the job name as given (`append_job_name` is False),
- the job name and the output folder carry the same day, the day the run starts,
- a retry (try 2, a fresh parse as on a worker) renders the same job name and outputs,
and prints what it rendered. scripts/check_dag.sh makes the virtualenvs and runs this:

    .venv-airflow3/bin/python scripts/check_dag.py dags/batch_predict_daily.py
"""
import datetime
import importlib.metadata
import os
import re
import sys
import tempfile
import uuid

DAG_ID = "batch_predict_daily"
TASK_ID = "batch_predict"
RUN_STARTS = datetime.datetime(2026, 11, 27, 3, 0, tzinfo=datetime.timezone.utc)
VARIABLES = {
    "batch_predict_project": "my-project",
    "batch_predict_region": "us-central1",
    "batch_predict_bucket": "my-bucket",
    "batch_predict_endpoint": "https://us-central1-aiplatform.googleapis.com/v1/projects/"
                              "my-project/locations/us-central1/endpoints/123:predict",
    "batch_predict_template": "gs://my-bucket/templates/batch-predict.json",
    "batch_predict_service_account": "sa@my-project.iam.gserviceaccount.com",
}
PROVIDERS = ("apache-airflow-providers-google", "apache-airflow-providers-apache-beam")
_LOCAL_HOSTS = ("127.0.0.1", "::1", "localhost")


class CheckFailed(Exception):
    pass


def refuse_network(event, args):
    """Audit hook: any connection or name lookup beyond this machine fails the check."""
    if event in ("socket.connect", "socket.getaddrinfo"):
        target = args[1] if event == "socket.connect" else args
        host = target[0] if isinstance(target, tuple) and target else target
        if isinstance(host, (str, bytes)) and str(host) not in _LOCAL_HOSTS \
                and not str(host).startswith("/"):
            raise OSError(f"network use in an offline check: {event} {args!r:.200}")


def isolate(home: str):
    """Airflow's configuration for this process: a fresh home, Variables from the env."""
    os.environ["AIRFLOW_HOME"] = home
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
    os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{home}/airflow.db"
    for name, value in VARIABLES.items():
        os.environ[f"AIRFLOW_VAR_{name.upper()}"] = value


def airflow_major() -> int:
    return int(importlib.metadata.version("apache-airflow").split(".")[0])


def load_dag(path: str):
    """The DAG as a DagBag parses it; import errors fail the check."""
    try:
        from airflow.dag_processing.dagbag import DagBag  # Airflow 3
    except ImportError:
        from airflow.models.dagbag import DagBag  # Airflow 2
    bag = DagBag(dag_folder=path)  # no examples: AIRFLOW__CORE__LOAD_EXAMPLES (isolate)
    if bag.import_errors:
        errors = (f"{file}: {error.strip().splitlines()[-1]}"
                  for file, error in bag.import_errors.items())
        raise CheckFailed(f"DAG import errors: {'; '.join(errors)}")
    if DAG_ID not in bag.dags:
        raise CheckFailed(f"no DAG {DAG_ID!r} in {path}: {sorted(bag.dags)}")
    return bag.dags[DAG_ID]


def scheduler_timetable(dag):
    """The timetable as the scheduler holds it: after the DAG's serialization round trip."""
    try:
        from airflow.serialization.serialized_objects import DagSerialization as serializer
    except ImportError:
        from airflow.serialization.serialized_objects import SerializedDAG as serializer
    return serializer.from_dict(serializer.to_dict(dag)).timetable


def scheduled_run(dag, starts: datetime.datetime):
    """The DagRunInfo of the scheduled run that starts at `starts`."""
    from airflow.timetables.base import TimeRestriction

    timetable = scheduler_timetable(dag)
    restriction = TimeRestriction(earliest=starts - datetime.timedelta(days=3), latest=None,
                                  catchup=True)
    last = None
    for _ in range(8):
        info = timetable.next_dagrun_info(last_automated_data_interval=last,
                                          restriction=restriction)
        if info is None or info.run_after > starts:
            break
        if info.run_after == starts:
            return info
        last = info.data_interval
    raise CheckFailed(f"{timetable!r} schedules no run at {starts.isoformat()}")


def empty_metadata_db():
    """Airflow 2's context looks up the previous successful run: a fresh SQLite metadata
    database (what `airflow db migrate` makes) in the temporary home."""
    from airflow.utils.db import initdb

    initdb(load_connections=False)


def render_airflow2(dag, info, try_number: int):
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.state import DagRunState, TaskInstanceState
    from airflow.utils.types import DagRunType

    run = DagRun(dag_id=dag.dag_id, run_id=f"scheduled__{info.logical_date.isoformat()}",
                 run_type=DagRunType.SCHEDULED, execution_date=info.logical_date,
                 data_interval=info.data_interval, start_date=info.run_after,
                 state=DagRunState.RUNNING)
    run.dag = dag
    ti = TaskInstance(dag.get_task(TASK_ID), run_id=run.run_id, state=TaskInstanceState.RUNNING)
    ti.dag_run = run
    ti.try_number = try_number
    empty_metadata_db()
    task = ti.task
    task.render_template_fields(ti.get_template_context())
    return task


def render_airflow3(dag, info, try_number: int):
    from airflow.sdk.api.datamodels._generated import DagRun, TIRunContext
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    task = dag.get_task(TASK_ID)
    run = DagRun(dag_id=dag.dag_id, run_id=f"scheduled__{info.run_after.isoformat()}",
                 logical_date=info.logical_date,
                 data_interval_start=info.data_interval.start,
                 data_interval_end=info.data_interval.end, run_after=info.run_after,
                 start_date=info.run_after, end_date=None, run_type="scheduled",
                 state="running", consumed_asset_events=[], partition_key=None)
    ti = RuntimeTaskInstance.model_construct(
        id=uuid.uuid4(), task_id=TASK_ID, dag_id=dag.dag_id, run_id=run.run_id,
        try_number=try_number, dag_version_id=uuid.uuid4(), map_index=-1, task=task,
        bundle_instance=None, max_tries=task.retries, start_date=info.run_after,
        state="running",
        _ti_context_from_server=TIRunContext(dag_run=run, max_tries=task.retries))
    task.render_template_fields(ti.get_template_context())
    return task


def render(path: str, try_number: int):
    """(run info, the task rendered for that try) from a fresh parse of the DAG file."""
    dag = load_dag(path)
    info = scheduled_run(dag, RUN_STARTS)
    renderer = render_airflow3 if airflow_major() >= 3 else render_airflow2
    return info, renderer(dag, info, try_number)


def unrendered(value) -> list:
    if isinstance(value, str):
        return [value] if "{{" in value or "{%" in value else []
    if isinstance(value, dict):
        return [s for v in value.values() for s in unrendered(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in unrendered(v)]
    return []


def launch_of(task) -> dict:
    """Job name, output and the day each carries, from a rendered task."""
    launch = task.body["launchParameter"]
    job, output = launch["jobName"], launch["parameters"]["output"]
    job_day = re.fullmatch(r"batch-predict-(\d{4})(\d{2})(\d{2})", job)
    output_day = re.search(r"/predictions/(\d{4}-\d{2}-\d{2})/", output)
    if not job_day or not output_day:
        raise CheckFailed(f"no day in job name {job!r} or output {output!r}")
    return {"job": job, "output": output, "job_day": "-".join(job_day.groups()),
            "output_day": output_day.group(1)}


def check(path: str) -> list:
    """Runs the checks; returns the lines to print."""
    info, first = render(path, try_number=1)
    _, retry = render(path, try_number=2)
    if first.append_job_name is not False:
        raise CheckFailed(f"append_job_name is {first.append_job_name!r}, not False")
    left = unrendered([first.body, first.project_id, first.location])
    if left:
        raise CheckFailed(f"templates left unrendered: {left}")
    if (first.project_id, first.location) != (VARIABLES["batch_predict_project"],
                                              VARIABLES["batch_predict_region"]):
        raise CheckFailed(f"Variables not rendered: {first.project_id!r}, {first.location!r}")
    a, b = launch_of(first), launch_of(retry)
    if a["job_day"] != a["output_day"]:
        raise CheckFailed(f"job name day {a['job_day']} != output day {a['output_day']}")
    if a["job_day"] != RUN_STARTS.date().isoformat():
        raise CheckFailed(f"day {a['job_day']} is not the day the run starts, "
                          f"{RUN_STARTS.date()}")
    if first.body != retry.body:
        raise CheckFailed(f"a retry renders another launch: {first.body} != {retry.body}")
    versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in PROVIDERS)
    interval = info.data_interval
    return [
        f"Airflow {importlib.metadata.version('apache-airflow')} ({versions}): "
        f"{DAG_ID} imported, no errors",
        f"  run starting {info.run_after.isoformat()}: logical date "
        f"{info.logical_date.isoformat()}, data interval {interval.start.isoformat()} .. "
        f"{interval.end.isoformat()}",
        f"  job name {a['job']} (append_job_name False), output {a['output']}",
        f"  try 2: job name {b['job']}, output {b['output']}",
        "  OK: one day for job name and outputs, the day the run starts; same on a retry",
    ]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not os.path.isfile(argv[0]):
        print("usage: check_dag.py DAG_FILE (an existing file)", file=sys.stderr)
        return 2
    sys.addaudithook(refuse_network)
    with tempfile.TemporaryDirectory(prefix="airflow-home-") as home:
        isolate(home)
        try:
            lines = check(os.path.abspath(argv[0]))
        except CheckFailed as e:
            print(f"check_dag: FAIL: {e}", file=sys.stderr)
            return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
