"""Every shipped YAML config loads into a valid JobConfig; the command line wins over it."""
import glob
import os
import re

import pytest
from apache_beam.options.pipeline_options import (DebugOptions, GoogleCloudOptions, SetupOptions,
                                                  WorkerOptions)

from pipeline.config import build_config
from pipeline.options import ConfigError, is_dry_run, parse_options, PredictOptions
from protocols.base import PROTOCOLS
from transforms.read import InputSource
from transforms.rows import RowSpec

CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.yaml")))


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_shipped_config_is_valid(path):
    options = parse_options(["--config", path, "--input", "x", "--output", "o",
                             "--endpoint", "https://example.invalid/v1/m:predict"])
    config = build_config(options)
    assert config.max_request_bytes <= 1_572_864
    assert config.protocol.name in PROTOCOLS


def test_command_line_wins_and_replaces_lists(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("input: [a, b]\nqps: 5\nmax_retries: 2\nskip_existing: true\n")
    options = parse_options(["--config", str(path), "--input", "c", "--qps", "7", "--output", "o",
                             "--endpoint", "http://127.0.0.1:1/m:predict"])
    config = build_config(options)
    assert config.inputs == ("c",)
    assert config.predict.qps_share == 7 and config.client.retry.max_retries == 2
    assert config.skip_existing


def test_config_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        parse_options(["--config", str(path)])


def test_yaml_lists_repeat_repeatable_flags_and_join_the_others(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("input: [a, b]\npassthrough_fields: [region, camera]\n"
                    "label_names: [cat, dog]\nlabels: [team=a, env=b]\n")
    options = parse_options(["--config", str(path)])
    assert options.view_as(PredictOptions).input == ["a", "b"]
    assert options.view_as(PredictOptions).passthrough_fields == "region,camera"
    assert options.view_as(PredictOptions).label_names == "cat,dog"
    assert options.view_as(GoogleCloudOptions).labels == ["team=a", "env=b"]  # Beam's job labels


@pytest.mark.parametrize("yaml_text, message", [
    ("protocol: grpc\n", "argument --protocol: invalid choice: 'grpc' (choose from 'mlengine', "
                         "'automl', 'vertex', 'v2')"),
    ("output_format: csv\n", "argument --output_format: invalid choice: 'csv'"),
    ("qps: fast\n", "argument --qps: invalid float value: 'fast'"),
    ("qps: true\n", "argument --qps: invalid float value: 'true'"),
    ("max_retries: false\n", "argument --max_retries: invalid int value: 'false'"),
    ("no_such_option: 1\n", "unknown flag --no_such_option (see --help)"),
])
def test_a_bad_yaml_value_is_refused_as_on_the_command_line(tmp_path, yaml_text, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_options(["--config", str(path)])
    flag, value = yaml_text.strip().split(": ")
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_options([f"--{flag}", value])


def test_yaml_values_are_typed_as_flags_are(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("qps: 20\nmax_retries: '3'\nexperiments: use_runner_v2\nskip_existing: true\n"
                    "dry_run: true\n")
    options = parse_options(["--config", str(path)])
    own = options.view_as(PredictOptions)
    assert (own.qps, own.max_retries, own.skip_existing) == (20.0, 3, True)
    assert isinstance(own.qps, float)
    assert options.view_as(DebugOptions).experiments == ["use_runner_v2"]  # repeatable: a list
    assert is_dry_run(options)


def test_yaml_switches_are_the_command_line_switches(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("no_use_public_ips: true\nsave_main_session: true\nskip_existing: false\n")
    options = parse_options(["--config", str(path)])
    assert options.view_as(WorkerOptions).use_public_ips is False
    assert options.view_as(SetupOptions).save_main_session is True
    assert options.view_as(PredictOptions).skip_existing is False
    assert parse_options(["--config", str(path), "--use_public_ips"]).view_as(
        WorkerOptions).use_public_ips is True  # the command line wins


def test_yaml_takes_every_flag_name_and_the_command_line_wins_by_option(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("worker_machine_type: n2-standard-4\nuse_public_ips: false\n"
                    "experiments: [a]\n")
    options = parse_options(["--config", str(path), "--experiment", "b"])
    assert options.view_as(WorkerOptions).machine_type == "n2-standard-4"  # Beam's alias flag
    assert options.view_as(WorkerOptions).use_public_ips is False
    assert options.view_as(DebugOptions).experiments == ["b"]


@pytest.mark.parametrize("value", ["0", "'no'", "[true]"])
def test_a_switch_in_yaml_takes_only_true_or_false(tmp_path, value):
    path = tmp_path / "c.yaml"
    path.write_text(f"skip_existing: {value}\n")
    with pytest.raises(ConfigError, match="--skip_existing is a switch: give true or false"):
        parse_options(["--config", str(path)])


def test_stage_settings_are_built_once_in_the_config(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    config = build_config(parse_options([
        "--input", str(folder), "--input", "gs://b/rows.csv", "--output", "o", "--key_field", "id",
        "--endpoint", "https://ml.googleapis.com/v1/m:predict", "--max_retries", "2"]))
    assert config.sources == (InputSource(str(folder), str(folder) + "/**", "images"),
                               InputSource("gs://b/rows.csv", "gs://b/rows.csv", "csv"))
    assert config.row_spec == RowSpec(key_field="id")
    assert config.client.auth == "adc" and config.client.retry.max_retries == 2
    assert config.predict.client is config.client and config.protocol.name == "mlengine"


PRIVATE_PARSER_NAMES = ("_BeamArgumentParser", "_AppendAction")


def test_no_code_depends_on_private_parser_classes():
    root = os.path.join(os.path.dirname(__file__), "..")
    sources = [p for folder in ("pipeline", "transforms", "dataflow", "tests")
               for p in glob.glob(os.path.join(root, folder, "*.py"))
               if os.path.basename(p) != os.path.basename(__file__)]
    for path in sources:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        assert not [n for n in PRIVATE_PARSER_NAMES if n in text], path


@pytest.mark.parametrize("text", [b"input: [a\n", b"output: caf\xe9\n"])
def test_a_config_that_is_not_yaml_is_one_line(tmp_path, text):
    """Not YAML, or not UTF-8 text (a Latin-1 file)."""
    path = tmp_path / "c.yaml"
    path.write_bytes(text)
    with pytest.raises(ConfigError) as raised:
        parse_options(["--config", str(path)])
    assert str(raised.value).startswith(f"cannot read --config {path}: ")
    assert "\n" not in str(raised.value)
