"""The pipeline's command-line flags, as Beam PipelineOptions.

Parsed once, here (`parse_options`: the command line, and a YAML --config under it); every Beam
flag (`--runner`, `--project`, ...) passes through untouched. `pipeline.config` turns these
into a validated JobConfig. The enumerations are the owning transforms' own; a flag's value is
validated here, once, whether it comes from the command line or a YAML --config.
"""
import argparse
from typing import Callable, List, Sequence

import yaml
from apache_beam.options.pipeline_options import PipelineOptions, TestOptions

from engine.auth import AUTH_MODES
from imaging.tensor import (CHANNEL_ORDERS, DTYPES, LAYOUTS, PRESETS, RESAMPLING, RESIZE_MODES,
                            TensorRequest)
from pipeline.earlier_runs import DEFAULT_STALE_AFTER_S
from protocols.base import INSTANCE_FORMATS, PROTOCOLS
from protocols.embedding import NORMALIZATIONS
from transforms.commit import DEFAULT_COMMIT_RECORDS, DEFAULT_COMMIT_SECONDS
from transforms.read import INPUT_FORMATS
from transforms.tfrecords import DEFAULT_FEATURE
from transforms.write import OUTPUT_FORMATS

DEFAULT_MAX_REQUEST_BYTES = 1_500_000


def one_of(choices: Sequence[str]) -> Callable[[str], str]:
    """An argparse `type` that accepts only `choices`, with argparse's own wording.

    argparse checks `choices` for command-line values only; as the type, the check also
    applies to a value from a YAML --config (given to the parser as a default)."""
    def check(value: str) -> str:
        if value not in choices:
            raise argparse.ArgumentTypeError(
                f"invalid choice: {value!r} (choose from {', '.join(map(repr, choices))})")
        return value
    return check


def enumerated(choices: Sequence[str]) -> dict:
    """add_argument keywords for a flag taking one of `choices`."""
    return dict(type=one_of(choices), choices=choices)


def options_parser() -> argparse.ArgumentParser:
    """One parser for every option this process knows, this pipeline's and Beam's.

    Strict: a bad value raises argparse.ArgumentError (no usage text, no exit). Options are
    declared by each PipelineOptions subclass's `_add_argparse_args`, as Beam does."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)  # pylint: disable=protected-access
    return parser


def _input_flags(add):
    add("--input", action="append", default=None,
        help="Required (here or in --config), repeatable. A folder, a glob "
             "(photos/**/*.jpg), a gs://bucket/prefix/** glob, a .csv/.jsonl file of rows, "
             "a file list (one URI per line), or TFRecord files (.tfrecord, .tfrecords, "
             ".tfrecord.gz).")
    add("--input_format", default="auto", **enumerated(INPUT_FORMATS),
        help="How to read --input: by extension (auto), or as named.")
    add("--uri_field", default="uri", help="Row column holding an image URI.")
    add("--b64_field", default=None, help="Row column holding inline base64 image bytes.")
    add("--key_field", default=None,
        help="Row column, or TFRecord Example feature, holding the record key (default: the "
             "URI; for TFRecords <file>:<record index>).")
    add("--tfrecord_feature", default=DEFAULT_FEATURE,
        help="TFRecord inputs: the tf.train.Example feature holding the image bytes; '' "
             "when each record is an image's bytes.")


def _endpoint_flags(add):
    add("--endpoint", default=None,
        help="Required (here or in --config). The full :predict URL (http or https).")
    add("--protocol", default="mlengine", **enumerated(PROTOCOLS),
        help="Wire protocol of the endpoint: ML Engine/Vertex `instances` (also KServe v1 "
             "and TF Serving), AutoML v1beta1, Vertex image instances, or v2 (Open "
             "Inference Protocol: KServe, Triton, MLServer; endpoint "
             ".../v2/models/NAME[/versions/V]/infer).")
    add("--instance_format", default="b64", **enumerated(INSTANCE_FORMATS),
        help="ML Engine instance form: {b64}, {key, image: {b64}}, or RGB nested lists; "
             "v2: a BYTES tensor of image files (b64) or an RGB tensor [n, H, W, 3] "
             "(tensor); --protocol vertex multimodal: Vertex multimodal embeddings "
             "{image: {bytesBase64Encoded}}, one a request (the default for a "
             "publishers/google/models/multimodalembedding@...:predict endpoint).")
    add("--binary_data", action="store_true", default=False,
        help="v2: send and ask for tensors through the binary tensor data extension "
             "instead of JSON (no base64: about a quarter fewer bytes).")
    add("--model_input", default=None,
        help="v2: name of the model's input tensor (default: the model metadata's one "
             "input).")
    add("--classification", type=int, default=0,
        help="v2: ask for the top K classes through the classification extension "
             "(Triton: 'score:index:label' strings).")
    add("--parameters", default=None,
        help="JSON object of model parameters sent with every request (ML Engine and "
             "Vertex `parameters`, v2 request `parameters`), e.g. "
             "'{\"maxPredictions\": 5}'.")
    add("--image_size", default=None,
        help="Optional WxH: image files are resized to fit inside it; tensors are prepared "
             "at exactly this size (v2: read from the model's metadata when not given).")
    _tensor_flags(add)
    add("--label_names", default=None,
        help="Comma-separated class names in the model's class-index order, for models "
             "that answer unnamed scores or class indices.")
    add("--label_names_file", default=None,
        help="The same from a file (local or gs://): one name per line, a JSON list, or "
             "a JSON {\"0\": name} map (TorchServe index_to_name.json).")
    add("--labels_field", default=None,
        help="Dotted path to the labels in a prediction of a custom shape "
             "(e.g. outputs.classes); v2: the name of the label output tensor; see "
             "docs/predictions.md.")
    add("--scores_field", default=None,
        help="Dotted path to the scores in a prediction of a custom shape "
             "(e.g. outputs.scores): a list, a {label: score} map or one number; v2: "
             "the name of the score output tensor.")
    add("--score_threshold", type=float, default=None,
        help="AutoML params.score_threshold / Vertex confidenceThreshold.")
    _embedding_flags(add)


def _embedding_flags(add):
    """Vectors: the `embedding` column (docs/outputs.md)."""
    add("--embedding_field", default=None,
        help="Where the image's vector is: a dotted path in a prediction (e.g. embedding), "
             "or a v2 output's name (default: a v2 model's one float output [-1, d] named "
             "embedding, embeddings, features, image_embeds or pooler_output when no "
             "--labels_field/--scores_field is given; multimodal: imageEmbedding).")
    add("--normalize_embedding", default="none", **enumerated(NORMALIZATIONS),
        help="Scale each vector to unit length (l2) before it is written, or not (none).")
    add("--keep_embedding_prediction", action="store_true", default=False,
        help="Keep the `prediction` text (the model's answer as JSON, vector included) on "
             "rows with an embedding; by default it is left empty there.")
    add("--send_uri", action="store_true", default=False,
        help="--instance_format multimodal: send gs:// inputs as {image: {gcsUri}} "
             "(never read by the workers); local files and inline rows are sent as bytes.")


TENSOR_DEFAULTS = TensorRequest._field_defaults  # pylint: disable=protected-access


def _tensor_flags(add):
    """How an image becomes the tensor a model was trained on (--instance_format tensor);
    see docs/servers.md, "Preparing tensors"."""
    add("--resize", default=TENSOR_DEFAULTS["resize"], **enumerated(RESIZE_MODES),
        help="Tensors: fit (exactly --image_size), crop (shorter side to size / "
             "--crop_fraction, then the centre), pad (letterbox with --pad_value) or "
             "stretch.")
    add("--crop_fraction", type=float, default=TENSOR_DEFAULTS["crop_fraction"],
        help="--resize crop: the share of the resized image kept (0.875: torchvision's "
             "Resize(256) + CenterCrop(224)).")
    add("--pad_value", type=int, default=TENSOR_DEFAULTS["pad_value"],
        help="--resize pad: the border's pixel value.")
    add("--resample", default=TENSOR_DEFAULTS["resample"], **enumerated(tuple(RESAMPLING)),
        help="Tensors: the resampling filter (with Pillow's antialiasing).")
    add("--tensor_layout", default=None, **enumerated(LAYOUTS),
        help="Tensors: NHWC or NCHW (default: the v2 model's metadata, else NHWC).")
    add("--tensor_dtype", default=None, **enumerated(tuple(DTYPES)),
        help="Tensors: UINT8, FP16 or FP32 (default: the v2 model's metadata, else UINT8).")
    add("--channel_order", default=None, **enumerated(CHANNEL_ORDERS),
        help="Tensors: RGB or BGR (default: the --normalize preset's, else RGB).")
    add("--normalize", default=None, **enumerated(tuple(PRESETS)),
        help="Tensors: (pixel - mean) / std as a preset: none, unit (0..1), inception "
             "(-1..1), imagenet (torchvision), caffe (BGR minus the means).")
    add("--mean", default=None,
        help="Tensors: one or three numbers on 0..255 values, e.g. 127 or "
             "123.675,116.28,103.53 (instead of --normalize).")
    add("--std", default=None, help="Tensors: one or three positive numbers (see --mean).")
    add("--tensor_input_name", default=None,
        help="--protocol mlengine tensors: send each instance as {NAME: tensor} (a TF "
             "Serving / Vertex model's named input).")


def _request_flags(add):
    add("--max_instances_per_request", type=int, default=32,
        help="Hard cap on instances per request.")
    add("--max_request_bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
        help="Hard cap on the serialized request body, in bytes.")
    add("--max_concurrent_requests", type=int, default=16,
        help="Requests in flight per worker process.")
    add("--qps", type=float, default=0.0,
        help="Requests per second for the whole job, shared across workers; 0 = no limit.")
    add("--qps_worker_processes", type=int, default=None,
        help="How many worker processes share --qps (default: derived from the runner "
             "options; docs/dataflow.md, \"How --qps is shared across workers\").")
    add("--max_retries", type=int, default=5, help="Retries per request.")
    add("--request_timeout_s", type=float, default=60.0, help="Per-attempt timeout.")
    add("--max_response_bytes", type=int, default=64 * 1024 * 1024,
        help="Largest reply body read (after decompression); a larger one fails its "
             "request like a bad answer.")
    add("--failure_threshold", type=float, default=0.5,
        help="Stop the job (exit 3) once more than this fraction of the records sent to "
             "the endpoint failed, counted per worker process after "
             "--failure_threshold_min_records; also when each of a process's first 10 "
             "requests failed. 1 = never stop (see docs/faults.md).")
    add("--failure_threshold_min_records", type=int, default=100,
        help="Records a worker process must have tried before --failure_threshold "
             "applies.")
    add("--auth", default="auto", **enumerated(AUTH_MODES),
        help="auto: Application Default Credentials for Google API hosts "
             "(*.googleapis.com, *.prediction.vertexai.goog), none elsewhere; "
             "adc: always (https only).")


def _output_flags(add):
    add("--output", default=None,
        help="Required (here or in --config). Output prefix (local path or gs://), not a "
             "folder: files are <output>-<run id>-...; may hold {date} (UTC YYYY-MM-DD) "
             "and {run_id}.")
    add("--output_format", default="parquet", **enumerated(OUTPUT_FORMATS),
        help="What to write.")
    add("--errors", default=None, help="Dead-letter prefix (default <output>-errors); "
                                       "may hold {date} and {run_id}.")
    add("--skip_existing", action="store_true", default=False,
        help="Backfill: keys already present under --output are not predicted again.")
    add("--retry_dead_letters", default=None,
        help="A dead-letter prefix (e.g. <output>-errors): predict only the --input "
             "records whose keys are in <prefix>-*.jsonl, less those already predicted "
             "under --output (as --skip_existing does), so a second retry adds no duplicate.")
    add("--no_prediction_column", action="store_true", default=False,
        help="Leave the model's raw prediction (the `prediction` column, JSON text) out "
             "of the outputs.")
    add("--passthrough_fields", default=None,
        help="Comma-separated columns of CSV/JSONL input rows (or features of TFRecord "
             "Examples) copied into the outputs.")
    add("--bigquery_table", default=None,
        help="For --output_format bigquery: project:dataset.table (appended to).")
    add("--bigquery_temp_location", default=None,
        help="For --output_format bigquery: gs:// folder for load files "
             "(default --temp_location).")
    add("--report", action="store_true", default=False,
        help="At the end, write the run's HTML report to <output>-<run id>-report.html "
             "(also: batch-predict report <run prefix>).")
    add("--limit", type=int, default=None,
        help="Predict only the first N inputs (by key: the same N on every run); the "
             "rest are counted as skipped.")


def _run_flags(add):
    add("--commit_every_records", type=int, default=DEFAULT_COMMIT_RECORDS,
        help="Commit finished predictions and dead letters durably while the job runs, "
             "in parts of at most this many records per writer; 0 = only at the end.")
    add("--commit_every_s", type=float, default=DEFAULT_COMMIT_SECONDS,
        help="... or once the oldest uncommitted record is this many seconds old.")
    add("--parts_stale_after_s", type=float, default=DEFAULT_STALE_AFTER_S,
        help="An earlier run without a summary whose files have not changed for this "
             "long is treated as dead: its temp files are removed and --skip_existing "
             "adopts its committed parts. A run whose process on this host has ended is "
             "dead at once; one whose process still runs is never adopted.")
    add("--config", default=None,
        help="A YAML file of these options; command-line flags win.")


FLAG_GROUPS = (
    ("inputs", _input_flags),
    ("the endpoint, its encoding and its answers", _endpoint_flags),
    ("requests", _request_flags),
    ("outputs and backfills", _output_flags),
    ("crash safety (docs/crash-safety.md), config", _run_flags),
)


class PredictOptions(PipelineOptions):

    @classmethod
    def _add_argparse_args(cls, parser):
        for title, add_flags in FLAG_GROUPS:
            add_flags(parser.add_argument_group(title).add_argument)


DRY_RUN_FLAG = "--dry_run"


_TRUE = ("true", "1", "yes")


_BOOL_WORDS = _TRUE + ("false", "0", "no")


def with_bare_dry_run(argv: Sequence[str]) -> List[str]:
    """argv with a bare `--dry_run` as `--dry_run=true`.

    Beam declares `--dry_run` itself (TestOptions, taking a value; DataflowRunner then
    submits nothing), so this pipeline reads that option rather than declaring its own,
    and lets it be given as a plain switch too: `--dry_run`, `--dry_run true`.
    """
    out = []
    argv = list(argv)
    for i, arg in enumerate(argv):
        following = argv[i + 1] if i + 1 < len(argv) else ""
        if arg == DRY_RUN_FLAG and following.lower() not in _BOOL_WORDS:
            arg = f"{DRY_RUN_FLAG}=true"
        out.append(arg)
    return out


def is_dry_run(options: PipelineOptions) -> bool:
    return str(options.view_as(TestOptions).dry_run).lower() in _TRUE


def parse_options(argv: Sequence[str]) -> PipelineOptions:
    """The PipelineOptions of a command line and its `--config` YAML (the command line
    wins); ConfigError for an unknown flag, a bad value or an unreadable config."""
    argv = with_bare_dry_run(argv)
    parser = options_parser()
    known = parse_strictly(parser, argv)
    if not known.config:
        return PipelineOptions(argv)
    given = {arg[2:].split("=", 1)[0] for arg in argv if arg.startswith("--")}
    values = yaml_options(parser, read_yaml(known.config), given)
    parser.set_defaults(**values)  # typed and checked by the parser like a flag's value
    merged = parse_strictly(parser, argv)
    return PipelineOptions(argv, **{name: getattr(merged, name) for name in values})


def parse_strictly(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """The options of argv; ConfigError for a bad value, or for a flag or argument that
    neither this pipeline nor Beam knows."""
    try:
        known, unknown = parser.parse_known_args(list(argv))
    except argparse.ArgumentError as e:
        raise ConfigError(str(e))
    flags = [a for a in unknown if a.startswith("-")]
    if flags:
        raise ConfigError(f"unknown flag {flags[0].split('=', 1)[0]} (see --help)")
    if unknown:  # e.g. an unquoted glob the shell expanded: `--input a.jpg b.jpg`
        raise ConfigError(f"unexpected argument {unknown[0]!r} (quote globs given to --input; "
                          f"repeat --input for several)")
    return known


def read_yaml(path: str) -> dict:
    """The mapping of option: value in a YAML --config file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"cannot read --config {path}: not UTF-8 text (byte {e.start})")
    except (OSError, yaml.YAMLError) as e:  # a YAML error spans several lines
        raise ConfigError(f"cannot read --config {path}: {' '.join(str(e).split())}")
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path} must be a mapping of option: value")
    return data


def yaml_options(parser: argparse.ArgumentParser, data: dict, given: set) -> dict:
    """The YAML options the command line leaves to the file, by option (dest), in the form
    argparse takes as defaults (a string is typed and checked by the parser as a flag's value
    would be): true/false for a switch, a list for a repeatable option (`input`, Beam's
    `experiments`, ...), else one value, a list comma-separated (`passthrough_fields: [a, b]`).
    A key may be any of an option's flag names (Beam's `worker_machine_type`)."""
    actions = option_actions(parser)
    given = {actions[flag].dest for flag in given if flag in actions}
    values = {}
    for name, value in data.items():
        action = actions.get(name)
        if action is None:
            raise ConfigError(f"unknown flag --{name} (see --help)")
        if value is None or action.dest in given:
            continue  # the command line wins, whole (a list included)
        if action.nargs == 0:
            values.update(switch_value(name, action, value))
            continue
        items = [str(item).lower() if isinstance(item, bool) else str(item)
                 for item in (value if isinstance(value, list) else [value])]
        values[action.dest] = items if is_repeatable(parser, action) else ",".join(items)
    return values


def option_actions(parser: argparse.ArgumentParser) -> dict:
    """Each long flag's name (`worker_machine_type`) -> its argparse action."""
    flags = parser._option_string_actions  # pylint: disable=protected-access
    return {flag[2:]: action for flag, action in flags.items() if flag.startswith("--")}


def switch_value(name: str, action: argparse.Action, value) -> dict:
    """{dest: value} of a switch given true or false (`no_use_public_ips: true` and
    `use_public_ips: false` both set use_public_ips False)."""
    if not isinstance(value, bool):
        raise ConfigError(f"--{name} is a switch: give true or false, not {value!r}")
    if value:
        return {action.dest: action.const}
    return {action.dest: not action.const} if isinstance(action.const, bool) else {}


def is_repeatable(parser: argparse.ArgumentParser, action: argparse.Action) -> bool:
    """Whether the option collects its values into a list (argparse's action="append")."""
    try:
        parsed = parser.parse_known_args([f"{action.option_strings[0]}=x"])[0]
        return isinstance(getattr(parsed, action.dest), list)
    except argparse.ArgumentError:  # a switch, or a type that does not take "x"
        return False


class ConfigError(ValueError):
    """A bad invocation: reported as one line on stderr, exit status 2."""
