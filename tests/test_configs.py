"""Every shipped YAML config loads into a valid JobConfig; the command line wins over it."""
import glob
import os

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.config import ConfigError, build_config, with_config_file
from transforms.protocols import PROTOCOLS

CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.yaml")))


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_shipped_config_is_valid(path):
    argv = with_config_file(["--config", path, "--input", "x", "--output", "o",
                             "--endpoint", "https://example.invalid/v1/m:predict"])
    config = build_config(PipelineOptions(argv))
    assert config.max_request_bytes <= 1_572_864
    assert config.protocol.name in PROTOCOLS


def test_command_line_wins_and_replaces_lists(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("input: [a, b]\nqps: 5\nmax_retries: 2\nskip_existing: true\n")
    argv = with_config_file(["--config", str(path), "--input", "c", "--qps", "7"])
    options = PipelineOptions(argv + ["--output", "o", "--endpoint", "http://127.0.0.1:1/m:predict"])
    config = build_config(options)
    assert config.inputs == ("c",)
    assert config.qps_share == 7 and config.max_retries == 2 and config.skip_existing


def test_config_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        with_config_file(["--config", str(path)])


def test_yaml_lists_repeat_repeatable_flags_and_join_the_others(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("input: [a, b]\npassthrough_fields: [region, camera]\n"
                    "label_names: [cat, dog]\nlabels: [team=a, env=b]\n")
    argv = with_config_file(["--config", str(path)])
    assert argv.count("--input=a") == 1 and "--input=b" in argv
    assert "--passthrough_fields=region,camera" in argv
    assert "--label_names=cat,dog" in argv
    assert "--labels=team=a" in argv and "--labels=env=b" in argv  # Beam's job labels
