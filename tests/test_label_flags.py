"""The label flags: --label_names, --label_names_file, --labels_field, --scores_field and
--no_prediction_column reach the protocol, and a bad one is one clear line at config time."""
import json
import subprocess
import sys

import pytest

from pipeline.options import ConfigError
from pipeline.run import parse
from protocols.labels import LabelSpec

BASE = ["--input", "/nowhere/images", "--endpoint", "http://127.0.0.1:9/v1/m:predict",
        "--output", "/nowhere/out/p"]


def protocol_of(*flags):
    return parse(BASE + list(flags))[1].protocol


def test_defaults_keep_the_prediction_and_name_nothing():
    protocol = protocol_of()
    assert protocol.labels == LabelSpec() and protocol.keep_prediction is True
    assert protocol_of("--no_prediction_column").keep_prediction is False
    assert protocol_of("--protocol", "automl", "--no_prediction_column").keep_prediction \
        is False


def test_label_names_and_fields_reach_the_protocol(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("tabby cat\ntiger, cat\nlynx\n", encoding="utf-8")
    assert protocol_of("--label_names_file", str(path)).labels.names == \
        ("tabby cat", "tiger, cat", "lynx")
    assert protocol_of("--label_names", "a, b,c").labels.names == ("a", "b", "c")
    spec = protocol_of("--protocol", "vertex", "--labels_field", "out.names",
                       "--scores_field", "out.scores").labels
    assert spec == LabelSpec((), "out.names", "out.scores")


def test_label_names_from_yaml_config(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text("label_names: [cat, dog]\nscores_field: probs\n", encoding="utf-8")
    assert protocol_of("--config", str(config)).labels == LabelSpec(("cat", "dog"), None,
                                                                    "probs")


@pytest.mark.parametrize("flags, message", [
    (["--label_names", "a,b", "--label_names_file", "x.txt"], "not both"),
    (["--label_names", "a,,b"], "--label_names: label 1 is empty"),
    (["--label_names", "a,b,a"], "'a' is named more than once"),
    (["--label_names_file", "/nowhere/labels.txt"], "cannot read --label_names_file"),
    (["--scores_field", "a..b"], "--scores_field 'a..b' is not a dotted path"),
    (["--labels_field", ""], "--labels_field '' is not a dotted path"),
    (["--protocol", "automl", "--label_names", "a,b"], "automl answers one fixed shape"),
])
def test_bad_label_flags_are_config_errors(flags, message):
    with pytest.raises(ConfigError, match=message):
        parse(BASE + flags)


def test_bad_label_names_file_is_one_line_on_stderr(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(["cat", "dog", "cat"]), encoding="utf-8")
    images = tmp_path / "images"
    images.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.run", "--input", str(images), "--endpoint",
         "http://127.0.0.1:9/m:predict", "--output", str(tmp_path / "o"),
         "--label_names_file", str(path)],
        capture_output=True, text=True, timeout=120)
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0] == (f"batch-predict: error: --label_names_file {path}: label 'cat' is "
                        f"named more than once")
