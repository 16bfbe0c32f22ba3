"""One typed, validated job config, built from the command line and an optional YAML file.

`parse_options` reads the command line and `--config FILE` into Beam PipelineOptions (a
YAML config holds the same options as the command line: `input: [...]`, `endpoint: ...`,
and Beam options such as `runner`; flags given on the command line win), and
`build_config` turns them into a JobConfig holding each stage's settings, built once.
"""
import dataclasses
import datetime
import json
import math
import os
import secrets
import urllib.parse
from typing import Optional, Sequence, Tuple

from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

from core.paths import has_glob, render_path
from engine.auth import resolve_auth
from engine.client import ClientSettings
from engine.engine import FailureThreshold, PredictSettings
from engine.ratelimit import worker_share
from engine.retry import RetryPolicy
from imaging.decode import parse_size
from imaging.tensor import TensorRequest
from pipeline.label_names import check_label_names, load_label_names
from pipeline.options import ConfigError, is_dry_run, PredictOptions, TENSOR_DEFAULTS
from pipeline.workers import runs_in_one_process, runs_locally, worker_processes
from protocols import is_multimodal_endpoint, make_protocol
from protocols.base import Protocol
from protocols.embedding import EmbeddingSpec
from protocols.labels import check_field_path, LabelSpec
from transforms.listing import escaped_key
from transforms.read import input_sources, InputSource, TFRECORD
from transforms.rows import RowSpec
from transforms.tfrecords import TFRecordSpec
from transforms.write import (bigquery_target, BigQueryTarget, parse_bigquery_table,
                              parse_passthrough_fields)


@dataclasses.dataclass(frozen=True)
class JobConfig:
    sources: Tuple[InputSource, ...]  # each --input with its pattern and format
    row_spec: RowSpec
    predict: PredictSettings  # the endpoint, protocol, client and failure threshold
    image_size: Optional[Tuple[int, int]]
    max_instances_per_request: int
    max_request_bytes: int
    output: str
    output_format: str
    errors: str
    skip_existing: bool
    run_id: str
    output_template: Optional[str] = None  # --output before {date}/{run_id} are filled in
    retry_dead_letters: Optional[str] = None  # a dead-letter prefix whose keys are retried
    passthrough_fields: Tuple[str, ...] = ()
    bigquery: Optional[BigQueryTarget] = None  # for --output_format bigquery
    bigquery_table: Optional[str] = None  # --bigquery_table (also named in `bq load`)
    errors_template: Optional[str] = None  # --errors before {date}/{run_id} are filled in
    commit_records: int = 0  # records per committed part; 0 = no incremental commits
    commit_seconds: float = 10.0
    parts_stale_after_s: float = 3600.0
    limit: Optional[int] = None  # predict only the first N inputs (by key)
    dry_run: bool = False
    worker_processes: int = 1  # processes sharing --qps (for the dry-run estimate)
    single_process: bool = True  # the whole job runs in this one process (local runs)
    local: bool = True  # the job runs on this machine (DirectRunner, FnApiRunner, Prism)
    tfrecord: TFRecordSpec = TFRecordSpec()  # how TFRecord inputs hold images and keys
    tensor_request: Optional[TensorRequest] = None  # the tensor flags as given

    @property
    def inputs(self) -> Tuple[str, ...]:
        return tuple(source.given for source in self.sources)

    @property
    def client(self) -> ClientSettings:
        return self.predict.client

    @property
    def protocol(self) -> Protocol:
        return self.predict.client.protocol

    def with_protocol(self, protocol: Protocol) -> "JobConfig":
        """This config with the protocol completed (e.g. from a v2 model's metadata)."""
        client = dataclasses.replace(self.predict.client, protocol=protocol)
        return dataclasses.replace(self, predict=dataclasses.replace(self.predict,
                                                                     client=client))

    @property
    def output_run_prefix(self) -> str:
        return f"{self.output}-{self.run_id}"

    @property
    def errors_run_prefix(self) -> str:
        return f"{self.errors}-{self.run_id}"

    @property
    def summary_path(self) -> str:
        return f"{self.output}-{self.run_id}-summary.json"

    @property
    def schema_path(self) -> str:
        return f"{self.output}.schema.json"


# -- the command line and --config ---------------------------------------------------------


MAX_QPS = 1_000_000  # a limiter keeps one send time per request of its one-second window

# Numeric flags: (name, smallest allowed, largest allowed or None, whether the smallest is
# allowed itself). Every value must be a finite number.
NUMBER_RULES = (
    ("max_instances_per_request", 1, None, True),
    ("max_request_bytes", 1, None, True),
    ("max_concurrent_requests", 1, None, True),
    ("qps", 0, MAX_QPS, True),
    ("qps_worker_processes", 1, None, True),
    ("max_retries", 0, None, True),
    ("request_timeout_s", 0, None, False),
    ("score_threshold", 0, 1, True),
    ("commit_every_records", 0, None, True),
    ("commit_every_s", 0, None, False),
    ("parts_stale_after_s", 0, None, True),
    ("max_response_bytes", 1, None, True),
    ("failure_threshold", 0, 1, True),
    ("failure_threshold_min_records", 1, None, True),
)


def check_numbers(options: PredictOptions):
    """ConfigError naming the first numeric flag out of its range (or NaN, or infinite)."""
    for name, low, high, low_allowed in NUMBER_RULES:
        value = getattr(options, name)
        if value is None:
            continue
        too_low = value < low if low_allowed else value <= low
        if not math.isfinite(value) or too_low or (high is not None and value > high):
            bound = f">= {low}" if low_allowed else f"> {low}"
            wanted = f"between {low} and {high}" if high is not None else bound
            raise ConfigError(f"--{name} must be a number {wanted}, not {value}")


def new_run_id(now: Optional[datetime.datetime] = None) -> str:
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def label_spec(o: PredictOptions) -> LabelSpec:
    """--label_names / --label_names_file and --labels_field / --scores_field, validated
    (the file is read here, once, on the launcher)."""
    if o.label_names and o.label_names_file:
        raise ValueError("give --label_names or --label_names_file, not both")
    names = ()
    if o.label_names:
        names = check_label_names([n.strip() for n in o.label_names.split(",")],
                                  "--label_names")
    elif o.label_names_file:
        names = load_label_names(o.label_names_file)
    return LabelSpec(names, check_field_path(o.labels_field, "--labels_field"),
                     check_field_path(o.scores_field, "--scores_field"))


def build_config(options: PipelineOptions, run_id: Optional[str] = None) -> JobConfig:
    """The validated JobConfig for these options; ConfigError says what is wrong."""
    o = options.view_as(PredictOptions)
    now = datetime.datetime.now(datetime.timezone.utc)
    run_id = run_id or new_run_id(now)
    try:
        check_required(options)
        sources = input_settings(o)
        check_endpoint(o.endpoint)
        check_numbers(o)
        if o.limit is not None and o.limit < 1:
            raise ValueError("--limit must be at least 1")
        image_size = parse_size(o.image_size)
        tensors = tensor_request(o, image_size)
        client = client_settings(o, tensors)
        outputs = output_settings(o, options, now.strftime("%Y-%m-%d"), run_id)
        tfrecord = tfrecord_settings(o, sources, outputs["passthrough_fields"])
        processes = worker_processes(options)
    except ValueError as e:  # ConfigError included
        raise ConfigError(str(e))
    return JobConfig(
        sources=sources,
        row_spec=RowSpec(o.uri_field, o.b64_field, o.key_field),
        predict=predict_settings(o, client, processes),
        image_size=image_size,
        max_instances_per_request=o.max_instances_per_request,
        max_request_bytes=o.max_request_bytes,
        run_id=run_id,
        **outputs,
        commit_records=o.commit_every_records,
        commit_seconds=o.commit_every_s,
        parts_stale_after_s=o.parts_stale_after_s,
        limit=o.limit,
        dry_run=is_dry_run(options),
        worker_processes=processes,
        single_process=runs_in_one_process(options, processes),
        local=runs_locally(options),
        tfrecord=tfrecord,
        tensor_request=tensors,
    )


REQUIRED = (
    ("input", "--input (a folder, glob, gs:// prefix or row file)"),
    ("endpoint", "--endpoint (the full :predict URL)"),
    ("output", "--output (an output prefix, local or gs://)"),
)


def missing_flags(options: PipelineOptions) -> Tuple[str, ...]:
    """Each flag this command needs and lacks, with what it takes."""
    o = options.view_as(PredictOptions)
    missing = [message for name, message in REQUIRED if not getattr(o, name)]
    if o.output_format == "bigquery":
        if not o.bigquery_table:
            missing.append("--bigquery_table (project:dataset.table, for --output_format "
                           "bigquery)")
        staging = o.bigquery_temp_location or options.view_as(GoogleCloudOptions).temp_location
        if not staging or not staging.startswith("gs://"):
            missing.append("--bigquery_temp_location gs://BUCKET/tmp (or --temp_location; "
                           "--output_format bigquery loads through files on GCS)")
    return tuple(missing)


def check_required(options: PipelineOptions):
    """ConfigError naming every missing flag at once."""
    missing = missing_flags(options)
    if missing:
        raise ConfigError(f"missing {'; '.join(missing)}")


def input_settings(o: PredictOptions) -> Tuple[InputSource, ...]:
    """Each --input with its pattern and format."""
    for given in o.input:
        if escaped_key(given) != given:
            raise ValueError(f"--input {escaped_key(given)} is not valid UTF-8: give the "
                             f"folder that holds it, or a glob")
    return input_sources(o.input, o.input_format)


def tfrecord_settings(o: PredictOptions, sources: Sequence[InputSource],
                      passthrough_fields: Tuple[str, ...]) -> TFRecordSpec:
    """Which Example features hold a TFRecord's image, key and pass-through values."""
    feature = o.tfrecord_feature or None
    if feature is None and o.key_field and any(s.format == TFRECORD for s in sources):
        raise ValueError("--key_field names a feature of a tf.train.Example: with "
                         "--tfrecord_feature '' (each record an image's bytes) TFRecord keys "
                         "are <file>:<record index>")
    return TFRecordSpec(feature, o.key_field, passthrough_fields)


def check_endpoint(url: str):
    """ValueError unless `url` is an http(s) URL with a host (and a valid port)."""
    try:
        endpoint = urllib.parse.urlsplit(url)
        endpoint.port  # pylint: disable=pointless-statement  (raises on a bad port)
    except ValueError as e:
        raise ValueError(f"--endpoint {url!r} is not a valid URL: {e}")
    if endpoint.scheme not in ("http", "https") or not endpoint.hostname:
        raise ValueError(f"--endpoint must be an http(s) URL, not {url!r}")


def client_settings(o: PredictOptions, request: Optional[TensorRequest]) -> ClientSettings:
    """The endpoint, its protocol (with the encoding and label flags) and the client's limits."""
    # v2 takes its tensor's layout, size and dtype from the model's metadata at start-up
    # (pipeline.model_check); elsewhere the flags say it all.
    tensor = request.spec(source=f"--protocol {o.protocol}") \
        if request is not None and o.protocol != "v2" else None
    protocol = make_protocol(
        *wire_format(o), label_spec(o), o.score_threshold,
        not o.no_prediction_column, parse_parameters(o.parameters), tensor,
        o.tensor_input_name or "", embedding_spec(o), o.send_uri, **_v2_options(o))
    return ClientSettings(
        endpoint=o.endpoint,
        protocol=protocol,
        max_concurrent_requests=o.max_concurrent_requests,
        request_timeout_s=o.request_timeout_s,
        retry=RetryPolicy(max_retries=o.max_retries),
        auth=resolve_auth(o.auth, o.endpoint),
        max_response_bytes=o.max_response_bytes,
    )


def predict_settings(o: PredictOptions, client: ClientSettings, processes: int
                     ) -> PredictSettings:
    """The Predict stage's settings: this process's share of --qps, when to stop the job."""
    threshold = FailureThreshold(max_failed_fraction=o.failure_threshold,
                                 min_records=o.failure_threshold_min_records)
    return PredictSettings(client=client,
                           qps_share=worker_share(o.qps, processes) if o.qps else 0.0,
                           failure_threshold=threshold)


def output_settings(o: PredictOptions, options: PipelineOptions, date: str, run_id: str
                    ) -> dict:
    """The JobConfig fields saying where and what to write."""
    output = _absolute(render_path(o.output, date, run_id))
    errors = _absolute(render_path(o.errors, date, run_id)) if o.errors else None
    passthrough_fields = parse_passthrough_fields(o.passthrough_fields)
    table = parse_bigquery_table(o.bigquery_table) if o.bigquery_table else o.bigquery_table
    bigquery = bigquery_settings(o, options, table)
    if errors is not None and errors == output:
        raise ValueError("--errors must differ from --output: dead letters and JSONL "
                         "predictions would share shard names")
    for flag, path in (("--output", output), ("--errors", errors)):
        if path and has_glob(path):
            raise ValueError(f"{flag} {path} holds a glob character (*, ? or [): Beam's file "
                             f"sinks read the paths they write as patterns; use a name "
                             f"without them")
    return dict(
        output=output,
        output_format=o.output_format,
        errors=errors or f"{output}-errors",
        # a retry of dead letters skips the keys an earlier retry already predicted
        skip_existing=o.skip_existing or (bool(o.retry_dead_letters)
                                          and o.output_format != "bigquery"),
        output_template=_absolute(o.output),
        errors_template=_absolute(o.errors) if o.errors else _absolute(o.output) + "-errors",
        retry_dead_letters=_absolute(o.retry_dead_letters) if o.retry_dead_letters else None,
        passthrough_fields=passthrough_fields,
        bigquery=bigquery,
        bigquery_table=table,
    )


def bigquery_settings(o: PredictOptions, options: PipelineOptions, table: Optional[str]
                      ) -> Optional[BigQueryTarget]:
    """The table `--output_format bigquery` appends to, and its GCS staging folder."""
    if o.output_format != "bigquery":
        return None
    target = bigquery_target(table, o.bigquery_temp_location
                             or options.view_as(GoogleCloudOptions).temp_location)
    if o.skip_existing:
        raise ValueError("--skip_existing reads earlier outputs under --output, not a "
                         "BigQuery table: use --output_format parquet/jsonl/both")
    return target


def parse_parameters(text: Optional[str]) -> dict:
    """`--parameters` as a dict; ValueError unless it is a JSON object."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ValueError(f"--parameters is not JSON: {e}")
    if not isinstance(value, dict):
        raise ValueError("--parameters must be a JSON object, e.g. '{\"maxPredictions\": 5}'")
    return value


TENSOR_FLAGS = ("resize", "crop_fraction", "pad_value", "resample", "tensor_layout",
                "tensor_dtype", "channel_order", "normalize", "mean", "std", "tensor_input_name")


def tensor_request(o: PredictOptions, image_size) -> Optional[TensorRequest]:
    """The tensor flags as given, for --instance_format tensor; None (and every tensor flag
    refused) for image files."""
    if o.instance_format != "tensor":
        for name in TENSOR_FLAGS:
            if getattr(o, name) not in (None, TENSOR_DEFAULTS.get(name)):
                raise ValueError(f"--{name} applies to --instance_format tensor")
        return None
    return TensorRequest(image_size, o.tensor_layout, o.tensor_dtype, o.resize,
                         o.crop_fraction, o.pad_value, o.resample, o.channel_order,
                         o.normalize, o.mean, o.std)


def wire_format(o: PredictOptions) -> Tuple[str, str]:
    """(--protocol, --instance_format); vertex multimodal for a Vertex multimodal embeddings
    endpoint left at the default instance format (b64) with --protocol vertex or the
    default mlengine."""
    if (o.instance_format == "b64" and o.protocol in ("vertex", "mlengine")
            and is_multimodal_endpoint(o.endpoint)):
        return "vertex", "multimodal"
    return o.protocol, o.instance_format


def embedding_spec(o: PredictOptions) -> EmbeddingSpec:
    """Where the vector is and what is done with it (--embedding_field and its flags)."""
    return EmbeddingSpec(check_field_path(o.embedding_field, "--embedding_field"),
                         o.normalize_embedding, o.keep_embedding_prediction)


def _v2_options(o: PredictOptions) -> dict:
    """The v2-only flags, refused with any other protocol."""
    given = [flag for flag, on in (("--binary_data", o.binary_data),
                                   ("--model_input", o.model_input),
                                   ("--classification", o.classification)) if on]
    if o.protocol != "v2":
        if given:
            raise ValueError(f"{given[0]} applies to --protocol v2 only")
        return {}
    if o.classification < 0:
        raise ValueError("--classification must be >= 0")
    return dict(input_name=o.model_input or "", binary=o.binary_data,
                classification=o.classification)


def _absolute(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)
