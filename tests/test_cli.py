"""The command line: bad invocations exit non-zero with one clear line on stderr."""
import json
import os
import socket
import subprocess
import sys

import apache_beam as beam
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from pipeline.google_access import google_uses
from pipeline.options import parse_options
from pipeline.run import main
from tests.helpers import cli, labelled_images, one_error_line, ROOT
from transforms import metrics




@pytest.fixture
def images(tmp_path):
    labelled_images(tmp_path / "images", ["red", "blue"])
    return str(tmp_path / "images")


def test_no_input_matched(tmp_path):
    line = one_error_line(cli("--input", str(tmp_path / "nothing" / "*.jpg"),
                              "--endpoint", "http://127.0.0.1:9/v1/m:predict",
                              "--output", str(tmp_path / "o")))
    assert "no file matched" in line


def test_unknown_protocol(images, tmp_path):
    line = one_error_line(cli("--input", images, "--endpoint", "http://127.0.0.1:9/v1/m:predict",
                              "--output", str(tmp_path / "o"), "--protocol", "grpc"))
    assert "--protocol" in line and "grpc" in line


def test_unknown_flag(images, tmp_path):
    line = one_error_line(cli("--input", images, "--endpoint", "http://127.0.0.1:9/m:predict",
                              "--output", str(tmp_path / "o"), "--no_such_flag", "1"))
    assert "--no_such_flag" in line


def test_bad_endpoint_url(images, tmp_path):
    line = one_error_line(cli("--input", images, "--endpoint", "ftp://example/x",
                              "--output", str(tmp_path / "o")))
    assert "--endpoint" in line


def test_unreadable_config(tmp_path):
    line = one_error_line(cli("--config", str(tmp_path / "missing.yaml")))
    assert "--config" in line


def test_config_file_with_command_line_override(images, tmp_path, server):
    config = tmp_path / "job.yaml"
    config.write_text(f"input: [{images}]\nendpoint: http://127.0.0.1:9/unused:predict\n"
                      f"output: {tmp_path / 'from_config'}\nmax_instances_per_request: 1\n")
    result = cli("--config", str(config), "--endpoint", server.endpoint("mlengine"))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["predicted"] == 2 and summary["requests"] == 2
    assert summary["output"].startswith(str(tmp_path / "from_config"))


def test_help_lists_the_pipelines_own_flags_first():
    result = cli("--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: batch-predict")
    for flag in ("--input", "--endpoint", "--max_request_bytes", "--qps", "--skip_existing"):
        assert flag in result.stdout
    assert "--runner" in result.stdout  # named in the description: Beam's flags pass through


def test_help_lists_dry_run_and_says_each_default_once():
    result = cli("--help")
    assert result.returncode == 0
    assert "  --dry_run " in result.stdout  # Beam's flag, which this pipeline reads
    assert "(default: None)" not in result.stdout
    assert "(default <output>-errors)" in " ".join(result.stdout.split())


def test_help_says_which_flags_are_required_and_that_output_is_a_prefix():
    text = " ".join(cli("--help").stdout.split())
    for flag in ("--input INPUT Required (here or in --config)",
                 "--endpoint ENDPOINT Required (here or in --config)",
                 "--output OUTPUT Required (here or in --config)"):
        assert flag in text
    assert "not a folder: files are <output>-<run id>-" in text


def test_help_groups_the_flags_by_concern():
    headings = [l for l in cli("--help").stdout.splitlines() if l.endswith(":")
                and not l.startswith(" ")]
    assert headings[0] in ("options:", "optional arguments:")  # argparse's own, by version
    assert headings[1:] == ["inputs:", "the endpoint, its encoding and its answers:",
                            "requests:", "outputs and backfills:",
                            "crash safety (docs/crash-safety.md), config:"]


@pytest.mark.parametrize("extra, expected", [
    (["--input", "b.jpg"], "unexpected argument 'b.jpg'"),  # an unquoted glob, expanded
    (["--errors", "{out}"], "--errors must differ from --output"),
    (["--endpoint", "http://127.0.0.1:99999/m:predict"], "Port out of range"),
    (["--runner", "NoSuchRunner"], "Unexpected pipeline runner: NoSuchRunner"),
])
def test_invocations_that_would_lose_or_hide_records(images, tmp_path, extra, expected):
    out = str(tmp_path / "o")
    extra = [e.replace("{out}", out) for e in extra]
    if extra[0] == "--input":  # the shell expanded `--input *.jpg` into two words
        args = ["--input", images, extra[1]]
    else:
        args = ["--input", images] + extra
    if "--endpoint" not in args:
        args += ["--endpoint", "http://127.0.0.1:9/m:predict"]
    line = one_error_line(cli(*args, "--output", out))
    assert expected in line


def count_an_input_that_goes_nowhere(element):
    metrics.counter("inputs").inc()
    return element


def test_a_run_whose_counts_do_not_add_up_exits_1(images, tmp_path, server, capsys):
    p = beam.Pipeline(runner=FnApiRunner())
    _ = p | "Lost" >> beam.Create([1]) | beam.Map(count_an_input_that_goes_nowhere)
    status = main(["--input", images, "--endpoint", server.endpoint("mlengine"),
                   "--output", str(tmp_path / "o")], test_pipeline=p)
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert status == 1
    assert (summary["inputs"], summary["predicted"], summary["accounted"]) == (3, 2, False)
    assert err.splitlines()[-1] == ("batch-predict: error: inputs != predicted + failed + "
                                    "skipped; some records are unaccounted for")


# -- Google services without credentials ----------------------------------------------------

def no_credentials_env(tmp_path) -> dict:
    """A machine with no Application Default Credentials and no reachable metadata server:
    google-auth's ADC file, gcloud's config and home are empty folders, the metadata server
    is a closed loopback port, and its GCE probe is off."""
    env = {k: v for k, v in os.environ.items() if k != "STORAGE_EMULATOR_HOST"}
    env.update(HOME=str(tmp_path / "home"), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"),
               GOOGLE_APPLICATION_CREDENTIALS=str(tmp_path / "missing.json"),
               GCE_METADATA_HOST="127.0.0.1:9", GCE_METADATA_IP="127.0.0.1:9",
               NO_GCE_CHECK="true")
    return env


@pytest.mark.parametrize("where, extra", [
    ("--input gs://", ["--input", "gs://my-bucket/photos/**"]),
    ("--output gs://", ["--output", "gs://my-bucket/out/p"]),
    ("--errors gs://", ["--errors", "gs://my-bucket/out/e"]),
    ("--output_format bigquery", ["--output_format", "bigquery", "--bigquery_table",
                                  "p:d.t", "--bigquery_temp_location", "gs://b/tmp"]),
    ("DataflowRunner", ["--runner", "DataflowRunner", "--project", "p", "--region",
                        "us-central1", "--temp_location", "gs://b/tmp"]),
])
def test_google_services_without_credentials_are_refused_in_one_line(images, tmp_path, where,
                                                                      extra):
    args = {"--input": images, "--output": str(tmp_path / "o"),
            "--endpoint": "http://127.0.0.1:9/v1/m:predict"}
    for flag, value in zip(extra[::2], extra[1::2]):
        args[flag] = value
    line = one_error_line(cli(*[x for pair in args.items() for x in pair],
                              env=no_credentials_env(tmp_path)))
    assert "gcloud auth application-default login" in line
    assert where.split()[0] in line


def test_which_jobs_use_google(monkeypatch):
    """gs:// paths count unless STORAGE_EMULATOR_HOST points at an emulator; BigQuery and
    Dataflow always count, except on a dry run, which runs here and only reads."""
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    local = ["--input", "pics", "--endpoint", "http://127.0.0.1:9/m:predict", "--output", "o"]
    assert google_uses(parse_options(local)) == ()
    gs_job = local + ["--output", "gs://b/o", "--input", "gs://b/x/**"]
    assert set(google_uses(parse_options(gs_job))) == {"--output gs://b/o", "--input gs://b/x/**"}
    assert google_uses(parse_options(gs_job + ["--dry_run"])) == ("--input gs://b/x/**",)
    dataflow = local + ["--runner", "DataflowRunner"]
    assert google_uses(parse_options(dataflow)) == ("--runner DataflowRunner",)
    assert google_uses(parse_options(dataflow + ["--dry_run"])) == ()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
    assert google_uses(parse_options(gs_job)) == ()
    assert google_uses(parse_options(dataflow)) == ("--runner DataflowRunner",)


def test_a_dry_run_checks_no_endpoint_credentials(images, tmp_path):
    """--auth adc's token is for requests, which a dry run never sends."""
    result = cli("--input", images, "--endpoint", "https://127.0.0.1:9/v1/m:predict",
                 "--auth", "adc", "--output", str(tmp_path / "o"), "--dry_run",
                 env=no_credentials_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["dry_run"] is True


def test_every_missing_flag_is_named_in_one_line(images, tmp_path):
    line = one_error_line(cli("--input", images, "--endpoint", "http://127.0.0.1:9/m:predict",
                              "--output", str(tmp_path / "o"), "--output_format", "bigquery"))
    assert "--bigquery_table" in line and "--bigquery_temp_location" in line
    line = one_error_line(cli("--max_retries", "1"))
    assert "--input" in line and "--endpoint" in line and "--output" in line


def test_the_credential_lookup_is_bounded_in_time(tmp_path):
    """A metadata server that never answers (google-auth probes it when no ADC file is
    found) does not hold the launcher: the lookup gives up after its timeout."""
    env = no_credentials_env(tmp_path)
    del env["GOOGLE_APPLICATION_CREDENTIALS"], env["NO_GCE_CHECK"]
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        env["GCE_METADATA_HOST"] = env["GCE_METADATA_IP"] = "127.0.0.1:%d" % \
            silent.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-c", "from pipeline.google_access import find_credentials; "
                                   "print(find_credentials(1.0))"],
            capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert done.stdout.strip() == "none found within 1 s", done.stdout + done.stderr
