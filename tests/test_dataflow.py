"""Dataflow readiness, proven offline: the job graph DataflowRunner would submit, the Flex
Template (Dockerfile, metadata.json, entry point), the schedules (Airflow DAG, Cloud Scheduler
body) and how --qps is shared among a Dataflow job's processes.

The job is built with DataflowRunner and `--dry_run True`: Beam translates the pipeline
exactly as for a submission (overrides, SDK environment, staged setup.py sdist, optimised
proto, the Dataflow Job message) and stops before the first API call. An audit hook refuses
every socket while that runs, and a timer bounds it, so a credential or bucket lookup fails
the test instead of hanging it.
"""
import argparse
import ast
import base64
import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import types

import apache_beam as beam
import pytest
from apache_beam.internal import pickler
from apache_beam.options.pipeline_options import (
    GoogleCloudOptions, PipelineOptions, WorkerOptions)
from apache_beam.portability import common_urns, python_urns
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.dataflow.internal import apiclient
from apache_beam.runners.worker import sdk_worker_main
from google.protobuf import json_format
from packaging.requirements import Requirement

from pipeline import run as pipeline_run
from pipeline.config import build_config
from pipeline.workers import machine_vcpus, worker_processes
from pipeline.graph import build_pipeline
from pipeline.options import ConfigError, parse_options, PredictOptions
from tests.helpers import labelled_images, ROOT, setup_packages

CONFIG = os.path.join(ROOT, "configs", "dataflow.yaml")
DATAFLOW_DIR = os.path.join(ROOT, "dataflow")
METADATA = os.path.join(DATAFLOW_DIR, "metadata.json")
DOCKERFILE = os.path.join(DATAFLOW_DIR, "Dockerfile")
SCHEDULER_BODY = os.path.join(DATAFLOW_DIR, "scheduler_launch.json")
DAG = os.path.join(ROOT, "dags", "batch_predict_daily.py")
LAUNCHER_BASE = "gcr.io/dataflow-templates-base/python311-template-launcher-base"
RUN_ID = "20240101T030000Z-abc123"
BUILD_TIMEOUT_S = 90
# Stages build_pipeline wires for configs/dataflow.yaml (skip_existing, parquet+jsonl), by
# step label: the labels are the job's stable step names on Dataflow.
CORE_STAGES = ("SelectTodo", "EncodeInstances", "PackRequests", "Predict", "WriteResults",
               "WriteDeadLetters")
# What build_config insists on; every other option has a default.
REQUIRED = {"input", "endpoint", "output"}


# -- offline guard ---------------------------------------------------------------------------

_NETWORK_EVENTS = ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname")
_guard = {"active": False, "attempts": []}


def _refuse_network(event, args):
    if _guard["active"] and event in _NETWORK_EVENTS:
        _guard["attempts"].append((event, repr(args)[:200]))
        raise OSError(f"network use during an offline test: {event} {args!r:.200}")


sys.addaudithook(_refuse_network)  # inert unless a test is inside offline()


class Deadline(BaseException):
    """Not an Exception, so the retry loops of Beam and google-auth cannot swallow it."""


@contextlib.contextmanager
def offline(seconds: float = BUILD_TIMEOUT_S):
    """No sockets and at most `seconds` inside; yields the list of refused connections."""
    def expire(signum, frame):
        raise Deadline(f"offline block still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)  # and again every second after
    _guard.update(active=True, attempts=[])
    try:
        yield _guard["attempts"]
    except Deadline as e:
        pytest.fail(f"{e}; refused connections: {_guard['attempts'][:5]}")
    finally:
        _guard["active"] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# -- the Dataflow job, built once --------------------------------------------------------------

def copy_project(dest) -> str:
    """The packages setup.py installs, copied (so building the sdist leaves the tree alone)."""
    shutil.copy(os.path.join(ROOT, "setup.py"), dest)
    for package in setup_packages():
        shutil.copytree(os.path.join(ROOT, package), os.path.join(dest, package),
                        ignore=shutil.ignore_patterns("__pycache__"))
    return os.path.join(dest, "setup.py")


@pytest.fixture(scope="module")
def dataflow_job(tmp_path_factory):
    """configs/dataflow.yaml through DataflowRunner in dry-run mode, offline."""
    setup_file = copy_project(tmp_path_factory.mktemp("project"))
    options = parse_options(["--config", CONFIG, "--dry_run", "True",
                             "--setup_file", setup_file])
    config = build_config(options, run_id=RUN_ID)
    with offline() as attempts:
        p = beam.Pipeline(options=options)
        build_pipeline(p, config)
        result = p.run()
    assert not attempts
    return types.SimpleNamespace(options=options, config=config, job=result.job)


def top_level_stages(proto):
    transforms = proto.components.transforms
    top = set()
    for root in proto.root_transform_ids:
        top.add(transforms[root].unique_name)
        top.update(transforms[t].unique_name for t in transforms[root].subtransforms)
    return top


def test_job_graph_has_every_stage(dataflow_job):
    """Every stage build_pipeline wires (read from a plain build of the same config) is in
    the graph DataflowRunner made, after its overrides and optimisations."""
    with offline():
        wired = top_level_stages(
            build_pipeline(beam.Pipeline(), dataflow_job.config).to_runner_api())
    assert set(CORE_STAGES) <= wired, sorted(wired)
    proto = dataflow_job.job.proto_pipeline
    assert wired <= top_level_stages(proto), wired - top_level_stages(proto)
    transforms = proto.components.transforms
    names = {t.unique_name for t in transforms.values()}
    assert any(n.startswith("WriteResults/WriteParquet") for n in names)
    assert any(n.startswith("WriteResults/WriteJsonl") for n in names)


def test_job_is_a_batch_job_with_the_worker_settings(dataflow_job):
    job = dataflow_job.job
    assert job.proto.type_.name == "JOB_TYPE_BATCH"
    env = apiclient.Environment(
        packages=[], options=dataflow_job.options, environment_version="8",
        proto_pipeline_staged_url="gs://my-bucket/dataflow/staging/pipeline.pb",
        proto_pipeline=job.proto_pipeline).proto
    pool = env.worker_pools[0]
    assert pool.machine_type == "n2-standard-4"
    assert pool.autoscaling_settings.max_num_workers == 10
    assert env.service_account_email == "batch-predict@my-project.iam.gserviceaccount.com"
    assert env.temp_storage_prefix.endswith("my-bucket/dataflow/tmp")


def test_setup_file_sdist_is_staged_for_the_workers(dataflow_job):
    staged = set()
    for environment in dataflow_job.job.proto_pipeline.components.environments.values():
        for artifact in environment.dependencies:
            if artifact.role_urn == common_urns.artifact_roles.STAGING_TO.urn:
                payload = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(
                    artifact.role_payload)
                staged.add(payload.staged_name)
    assert "workflow.tar.gz" in staged, staged


def pickled_fns(proto):
    """{transform name: pickled DoFn / CombineFn} of every Python function in the job."""
    found = {}
    combines = (common_urns.composites.COMBINE_PER_KEY.urn,
                common_urns.composites.COMBINE_GLOBALLY.urn,
                common_urns.combine_components.COMBINE_PER_KEY_PRECOMBINE.urn,
                common_urns.combine_components.COMBINE_PER_KEY_MERGE_ACCUMULATORS.urn,
                common_urns.combine_components.COMBINE_PER_KEY_EXTRACT_OUTPUTS.urn)
    for transform in proto.components.transforms.values():
        if transform.spec.urn == common_urns.primitives.PAR_DO.urn:
            spec = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload).do_fn
        elif transform.spec.urn in combines:
            spec = beam_runner_api_pb2.CombinePayload.FromString(
                transform.spec.payload).combine_fn
        else:
            continue
        if spec.urn in (python_urns.PICKLED_DOFN_INFO, python_urns.PICKLED_COMBINE_FN):
            found[transform.unique_name] = spec.payload
    return found


def unpickled_fn(payload: bytes):
    value = pickler.loads(payload)
    return value[0] if isinstance(value, tuple) else value


_WORKER_SCRIPT = """
import base64, json, sys
from apache_beam.internal import pickler
loaded = {}
for name, payload in json.load(open(sys.argv[1])).items():
    value = pickler.loads(base64.b64decode(payload))
    fn = value[0] if isinstance(value, tuple) else value
    pickler.dumps(fn)
    loaded[name] = type(fn).__module__ + "." + type(fn).__qualname__
print(json.dumps(loaded))
"""


def test_every_function_unpickles_in_a_fresh_worker_process(dataflow_job, tmp_path):
    fns = pickled_fns(dataflow_job.job.proto_pipeline)
    assert len(fns) >= 10, sorted(fns)
    dump = tmp_path / "fns.json"
    dump.write_text(json.dumps({k: base64.b64encode(v).decode() for k, v in fns.items()}))
    script = tmp_path / "worker.py"
    script.write_text(_WORKER_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(dump)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(loaded) == set(fns)
    assert "transforms.predict._PredictFn" in loaded.values(), loaded


def test_predict_fn_carries_its_process_share_of_qps(dataflow_job):
    fns = [unpickled_fn(p) for p in pickled_fns(dataflow_job.job.proto_pipeline).values()]
    (fn,) = [f for f in fns if type(f).__name__ == "_PredictFn"]
    # configs/dataflow.yaml: qps 20 over 10 workers x 4 vCPUs = 40 SDK processes.
    assert fn._settings.qps_share == pytest.approx(20 / 40)
    assert fn._settings.client.auth == "adc"
    assert fn._settings == dataflow_job.config.predict  # the config's, passed on as built


def test_options_round_trip_to_the_workers(dataflow_job):
    env = apiclient.Environment(
        packages=[], options=dataflow_job.options, environment_version="8",
        proto_pipeline_staged_url="gs://my-bucket/dataflow/staging/pipeline.pb",
        proto_pipeline=dataflow_job.job.proto_pipeline).proto
    sent_struct = json_format.MessageToDict(type(env).pb(env).sdk_pipeline_options)
    # Workers get the options as JSON from the container's boot loader, which prints whole
    # numbers without a fraction (protojson); Python's json_format would print 16.0.
    whole = {k: int(v) if isinstance(v, float) and v.is_integer() else v
             for k, v in sent_struct["options"].items()}
    on_worker = sdk_worker_main._parse_pipeline_options(json.dumps({"options": whole}))
    sent = dataflow_job.options.view_as(PredictOptions).get_all_options()
    received = on_worker.view_as(PredictOptions).get_all_options()
    for name in predict_dests():
        assert received[name] == sent[name], name
    assert received["input"] == ["gs://my-bucket/images/**"]
    assert received["skip_existing"] is True
    assert on_worker.view_as(WorkerOptions).max_num_workers == 10
    assert on_worker.view_as(GoogleCloudOptions).project == "my-project"


# -- the Flex Template -------------------------------------------------------------------------

def load_flex_main():
    spec = importlib.util.spec_from_file_location("flex_main", os.path.join(DATAFLOW_DIR,
                                                                            "main.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def predict_parser():
    parser = argparse.ArgumentParser(add_help=False)
    PredictOptions._add_argparse_args(parser)  # pylint: disable=protected-access
    return parser


def predict_dests():
    return {a.dest for a in predict_parser()._actions}  # pylint: disable=protected-access


def metadata_params():
    with open(METADATA, encoding="utf-8") as f:
        return {p["name"]: p for p in json.load(f)["parameters"]}


def test_metadata_lists_exactly_the_pipeline_options():
    params = metadata_params()
    assert sorted(params) == sorted(predict_dests())
    for name, param in params.items():
        assert param["label"].strip() and len(param["helpText"]) > 20, name
        assert param["isOptional"] is (name not in REQUIRED), name


def test_metadata_types_regexes_and_defaults_follow_the_parser():
    params = metadata_params()
    for action in predict_parser()._actions:  # pylint: disable=protected-access
        param = params[action.dest]
        regexes = [re.compile(r) for r in param.get("regexes", [])]

        def accepts(value, regexes=regexes):
            return all(r.search(value) for r in regexes)

        if action.nargs == 0:
            assert param["paramType"] == "BOOLEAN", action.dest
            assert accepts("true") and accepts("false") and not accepts("yes")
        elif action.choices:
            assert param["paramType"] == "ENUM", action.dest
            assert [o["value"] for o in param["enumOptions"]] == list(action.choices)
            assert all(accepts(c) for c in action.choices) and not accepts("bogus")
        elif action.type in (int, float):
            assert param["paramType"] == "NUMBER", action.dest
            assert not accepts("ten"), action.dest
        if "defaultValue" in param:
            value = param["defaultValue"]
            assert accepts(value), action.dest
            parsed = {"true": True, "false": False}.get(value, value)
            if action.type in (int, float):
                parsed = action.type(value)
            assert parsed == action.default, action.dest
        elif action.default not in (None, False):
            pytest.fail(f"{action.dest}: parser default {action.default!r} not in metadata")


def test_flex_switch_parameters_become_flags():
    flex = load_flex_main()
    argv = ["--skip_existing=true", "--input=gs://b/day=1/**", "--qps=5",
            "--skip_existing=False", "--skip_existing=maybe", "--endpoint", "x"]
    assert flex.flex_argv(argv) == ["--skip_existing", "--input=gs://b/day=1/**", "--qps=5",
                                    "--skip_existing=maybe", "--endpoint", "x"]


def test_flex_entry_point_launches_the_job_offline(tmp_path, capsys):
    """What the template launcher runs: dataflow/main.py with the scheduled parameters plus
    the launcher's own flags, `--template_location` included; in dry-run mode, offline."""
    flex = load_flex_main()
    labelled_images(tmp_path / "images", ["red", "blue"])
    body = load_scheduler_body()
    params = dict(body["launchParameter"]["parameters"],
                  input=str(tmp_path / "images"), output=str(tmp_path / "out" / "{date}" / "p"))
    launcher = {"runner": "DataflowRunner", "project": "my-project", "region": "us-central1",
                "temp_location": "gs://my-bucket/dataflow/tmp",
                "staging_location": "gs://my-bucket/dataflow/staging",
                "template_location": str(tmp_path / "job_object"), "dry_run": "True"}
    argv = [f"--{k}={v}" for k, v in {**params, **launcher}.items()]
    with offline() as attempts:
        status = flex.main(argv)
    assert not attempts
    out = capsys.readouterr()
    assert status == 0, out.err[-3000:]
    launched = json.loads(out.out[out.out.index("{"):])
    assert launched["template_location"] == str(tmp_path / "job_object")
    assert launched["output"].startswith(str(tmp_path / "out"))
    assert "{date}" not in launched["output"] and launched["run_id"] in launched["output"]
    assert list((tmp_path / "out").glob("*/p.schema.json"))


def dockerfile_instructions():
    with open(DOCKERFILE, encoding="utf-8") as f:
        lines = [line.strip() for line in f.read().replace("\\\n", " ").splitlines()]
    return [line.split(None, 1) for line in lines if line and not line.startswith("#")]


def test_dockerfile_follows_the_flex_template_conventions():
    args, env, copies, base = {}, {}, {}, None

    def expand(text):
        return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], text)

    for keyword, rest in dockerfile_instructions():
        if keyword == "FROM":
            base = rest
        elif keyword == "ARG":
            name, _, value = rest.partition("=")
            args[name] = value
        elif keyword == "ENV":
            name, _, value = rest.partition("=")
            env[name] = expand(value.strip('"'))
        elif keyword == "COPY":
            source, target = rest.split()
            copies[expand(target)] = source
    assert base.split(":")[0] == LAUNCHER_BASE
    assert copies[env["FLEX_TEMPLATE_PYTHON_PY_FILE"]] == "dataflow/main.py"
    assert copies[env["FLEX_TEMPLATE_PYTHON_SETUP_FILE"]] == "setup.py"
    for source in copies.values():
        assert os.path.exists(os.path.join(ROOT, source)), source
    assert {"pipeline", "transforms"} <= set(copies.values())
    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
        beam_req = re.search(r'"(apache-beam[^"]*)"', f.read()).group(1)
    assert Requirement(beam_req).specifier.contains(args["BEAM_VERSION"]), beam_req


# -- schedules -------------------------------------------------------------------------------

def load_scheduler_body():
    with open(SCHEDULER_BODY, encoding="utf-8") as f:
        return json.load(f)


def literal(node, names):
    """A literal expression, with module-level constants resolved by name."""
    if isinstance(node, ast.Name):
        return names[node.id]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return literal(node.left, names) + literal(node.right, names)
    if isinstance(node, ast.Dict):
        return {literal(k, names): literal(v, names) for k, v in zip(node.keys, node.values)}
    if isinstance(node, (ast.List, ast.Tuple)):
        return [literal(e, names) for e in node.elts]
    return ast.literal_eval(node)


def parse_dag():
    """(constants, DAG(...) keywords, operator call keywords) from the DAG file, via ast."""
    with open(DAG, encoding="utf-8") as f:
        tree = ast.parse(f.read(), DAG)
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            with contextlib.suppress(ValueError, KeyError):
                constants[node.targets[0].id] = literal(node.value, constants)
    imports = {alias.name: node.module for node in ast.walk(tree)
               if isinstance(node, ast.ImportFrom) for alias in node.names}
    calls = {node.func.id: node for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    dag = {k.arg: k.value for k in calls["DAG"].keywords}
    operator = {k.arg: k.value for k in calls["DataflowStartFlexTemplateOperator"].keywords}
    assert imports["DataflowStartFlexTemplateOperator"] == \
        "airflow.providers.google.cloud.operators.dataflow"
    return constants, dag, operator


# Airflow template values used to render the DAG's Jinja in these tests; scripts/check_dag.sh
# renders the same file with real Airflow 2 and 3 (docs/dataflow.md).
JINJA_SAMPLES = {
    "var.value.batch_predict_bucket": "my-bucket",
    "var.value.batch_predict_endpoint":
        "https://us-central1-aiplatform.googleapis.com/v1/projects/my-project/locations/"
        "us-central1/endpoints/123:predict",
    "var.value.batch_predict_project": "my-project",
    "var.value.batch_predict_region": "us-central1",
    "var.value.batch_predict_template": "gs://my-bucket/templates/batch-predict.json",
    "var.value.batch_predict_service_account": "sa@my-project.iam.gserviceaccount.com",
    "data_interval_end | ds": "2024-01-02",
    "data_interval_end | ds_nodash": "20240102",
}


def render(value):
    if isinstance(value, str):
        return re.sub(r"\{\{\s*([^{}]+?)\s*\}\}", lambda m: JINJA_SAMPLES[m.group(1)], value)
    if isinstance(value, dict):
        return {k: render(v) for k, v in value.items()}
    return value


def launch_argv(launch: dict) -> list:
    """The pipeline command line a Flex Template launch makes of a launch request."""
    env = launch["environment"]
    argv = [f"--{k}={v}" for k, v in launch["parameters"].items()]
    return argv + ["--runner=DataflowRunner", "--project=my-project", "--region=us-central1",
                   f"--temp_location={env['tempLocation']}",
                   f"--max_num_workers={env['maxWorkers']}",
                   f"--machine_type={env['machineType']}"]


def check_launch(launch: dict):
    """Parameters the template accepts, making a valid job that shares qps correctly."""
    params, meta = launch["parameters"], metadata_params()
    assert set(params) <= set(meta), set(params) - set(meta)
    assert REQUIRED <= set(params)
    for name, value in params.items():
        assert isinstance(value, str), name
        for regex in meta[name].get("regexes", []):
            assert re.search(regex, value), (name, value, regex)
    argv = load_flex_main().flex_argv(launch_argv(launch))
    options, config = pipeline_run.parse(argv)
    assert config.skip_existing
    assert "{date}" not in config.output
    env = launch["environment"]
    processes = env["maxWorkers"] * machine_vcpus(env["machineType"])
    assert int(params["qps_worker_processes"]) == processes
    assert config.predict.qps_share == pytest.approx(float(params["qps"]) / processes)
    # The launch's worker pool alone (if the launcher passes it on) gives the same count.
    without = dict(launch, parameters={k: v for k, v in params.items()
                                       if k != "qps_worker_processes"})
    derived = PipelineOptions(load_flex_main().flex_argv(launch_argv(without)))
    assert worker_processes(derived) == processes
    return options, config


def test_airflow_dag_runs_the_template_daily_with_valid_parameters():
    constants, dag, operator = parse_dag()
    assert literal(dag["schedule"], constants) == "0 3 * * *"
    assert literal(dag["catchup"], constants) is False
    assert literal(dag["max_active_runs"], constants) == 1
    assert set(operator) <= {"task_id", "project_id", "location", "body", "gcp_conn_id",
                             "wait_until_finished", "drain_pipeline", "cancel_timeout",
                             "impersonation_chain", "deferrable", "append_job_name",
                             "poll_sleep", "expected_terminal_state"}
    assert literal(operator["wait_until_finished"], constants) is True
    # a fixed job name per day: Dataflow refuses a second active job of that name
    assert literal(operator["append_job_name"], constants) is False
    body = literal(operator["body"], constants)
    launch = render(body["launchParameter"])
    _, config = check_launch(launch)
    # one day for the job name and the outputs, the same on Airflow 2 and 3 and on retries
    assert launch["jobName"] == "batch-predict-20240102"
    assert "/predictions/2024-01-02/" in config.output
    assert "{{ data_interval_end | ds }}" in body["launchParameter"]["parameters"]["output"]


def test_cloud_scheduler_body_launches_a_valid_job():
    launch = load_scheduler_body()["launchParameter"]
    assert launch["containerSpecGcsPath"].startswith("gs://")
    _, config = check_launch(launch)
    assert "{date}" in config.output_template


# -- how --qps is shared on Dataflow -------------------------------------------------------------

@pytest.mark.parametrize("machine_type, vcpus", [
    ("n2-standard-4", 4), ("n1-standard-1", 1), ("e2-medium", 2), ("c3-standard-4-lssd", 4),
    ("n1-custom-8-30720", 8), ("n2-custom-4-8192-ext", 4), ("custom-2-7680", 2),
    ("zones/us-central1-a/machineTypes/n2-highmem-16", 16), ("a2-highgpu-1g", None),
])
def test_machine_vcpus(machine_type, vcpus):
    assert machine_vcpus(machine_type) == vcpus


DATAFLOW = ["--runner=DataflowRunner", "--project=p", "--region=us-central1",
            "--temp_location=gs://my-bucket/tmp", "--input=gs://my-bucket/x/**",
            "--endpoint=https://example.com/v1/m:predict", "--output=gs://my-bucket/out/p"]


@pytest.mark.parametrize("extra, processes", [
    (["--max_num_workers=10", "--machine_type=n2-standard-4"], 40),
    (["--max_num_workers=10", "--machine_type=n2-standard-4",
      "--experiments=no_use_multiple_sdk_containers"], 10),
    (["--num_workers=3", "--autoscaling_algorithm=NONE", "--worker_machine_type=e2-medium"], 6),
    (["--max_num_workers=10", "--machine_type=a2-highgpu-1g", "--qps_worker_processes=7"], 7),
])
def test_dataflow_processes_sharing_qps(extra, processes):
    config = build_config(PipelineOptions(DATAFLOW + ["--qps=14"] + extra))
    assert config.predict.qps_share == pytest.approx(14 / processes)


@pytest.mark.parametrize("extra", [
    [],  # Dataflow may scale to its default maximum
    ["--num_workers=3"],  # autoscaling can go past num_workers
    ["--max_num_workers=10"],  # vCPUs per worker unknown
    ["--max_num_workers=10", "--machine_type=a2-highgpu-1g"],
])
def test_dataflow_qps_without_a_known_process_count_is_refused(extra):
    with pytest.raises(ConfigError, match="qps_worker_processes"):
        build_config(PipelineOptions(DATAFLOW + ["--qps=14"] + extra))
    assert build_config(PipelineOptions(DATAFLOW + extra)).predict.qps_share == 0.0
