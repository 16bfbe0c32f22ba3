"""One typed, validated job config, built from the command line and an optional YAML file.

A YAML config holds the same options as the command line (`input: [...]`, `endpoint: ...`,
and Beam options such as `runner`); flags given on the command line win.
"""
import dataclasses
import datetime
import os
import secrets
import urllib.parse
from typing import List, Optional, Sequence, Tuple

import yaml
from apache_beam.options.pipeline_options import (
    DirectOptions, PipelineOptions, StandardOptions, WorkerOptions)
from apache_beam.options.pipeline_options import _BeamArgumentParser

from pipeline.options import PredictOptions
from transforms.auth import resolve_auth
from transforms.encode import parse_size
from transforms.protocols import Protocol, make_protocol


class ConfigError(ValueError):
    """A bad invocation: reported as one line on stderr, exit status 2."""


@dataclasses.dataclass(frozen=True)
class JobConfig:
    inputs: Tuple[str, ...]
    input_format: str
    endpoint: str
    protocol: Protocol
    image_size: Optional[Tuple[int, int]]
    max_instances_per_request: int
    max_request_bytes: int
    max_concurrent_requests: int
    qps: float
    qps_share: float
    max_retries: int
    request_timeout_s: float
    auth: str
    output: str
    output_format: str
    errors: str
    skip_existing: bool
    run_id: str
    uri_field: str = "uri"
    b64_field: Optional[str] = None
    key_field: Optional[str] = None

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


def with_config_file(argv: Sequence[str]) -> List[str]:
    """argv with the options of `--config FILE` put first, so the command line wins."""
    argv = list(argv)
    parser = _BeamArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--config")
    known, _ = parser.parse_known_args(argv)
    if not known.config:
        return argv
    try:
        with open(known.config, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read --config {known.config}: {e}")
    if not isinstance(data, dict):
        raise ConfigError(f"--config {known.config} must be a mapping of option: value")
    given = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    return _as_flags(data, given) + argv


def _as_flags(data: dict, given: set) -> List[str]:
    flags = []
    for name, value in data.items():
        flag = f"--{name}"
        if flag in given or value is None or value is False:
            continue  # the command line wins, whole (a list included)
        for item in value if isinstance(value, list) else [value]:
            flags.append(flag if item is True else f"{flag}={item}")
    return flags


def check_known_flags(argv: Sequence[str]):
    """ConfigError for a flag that neither this pipeline nor Beam knows."""
    parser = _BeamArgumentParser(allow_abbrev=False)
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)  # pylint: disable=protected-access
    try:
        _, unknown = parser.parse_known_args(list(argv))
    except SystemExit:
        raise ConfigError("invalid command line (see --help)")
    flags = [a for a in unknown if a.startswith("-")]
    if flags:
        raise ConfigError(f"unknown flag {flags[0].split('=', 1)[0]} (see --help)")


def worker_processes(options: PipelineOptions) -> int:
    """How many processes share --qps: set explicitly, or derived from the runner options.

    DirectRunner: `--direct_num_workers` in multi_processing mode, else 1 (threads share one
    process and one limiter). Other runners: `--max_num_workers` (else `--num_workers`, else 1)
    times `--number_of_worker_harness_threads`-independent SDK processes per worker, which
    Dataflow runs one per vCPU: set --qps_worker_processes where that is not 1 (see README).
    """
    explicit = options.view_as(PredictOptions).qps_worker_processes
    if explicit:
        return explicit
    runner = (options.view_as(StandardOptions).runner or "DirectRunner").lower()
    if "direct" in runner or "fnapi" in runner:
        direct = options.view_as(DirectOptions)
        if direct.direct_running_mode == "multi_processing":
            return max(1, direct.direct_num_workers or 1)
        return 1
    workers = options.view_as(WorkerOptions)
    return max(1, workers.max_num_workers or workers.num_workers or 1)


def new_run_id(now: Optional[datetime.datetime] = None) -> str:
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def build_config(options: PipelineOptions, run_id: Optional[str] = None) -> JobConfig:
    """The validated JobConfig for these options; ConfigError says what is wrong."""
    o = options.view_as(PredictOptions)
    if not o.input:
        raise ConfigError("--input is required (a folder, glob, gs:// prefix or row file)")
    if not o.endpoint:
        raise ConfigError("--endpoint is required (the full :predict URL)")
    endpoint = urllib.parse.urlsplit(o.endpoint)
    if endpoint.scheme not in ("http", "https") or not endpoint.hostname:
        raise ConfigError(f"--endpoint must be an http(s) URL, not {o.endpoint!r}")
    if not o.output:
        raise ConfigError("--output is required (an output prefix, local or gs://)")
    for name in ("max_instances_per_request", "max_request_bytes", "max_concurrent_requests"):
        if getattr(o, name) < 1:
            raise ConfigError(f"--{name} must be at least 1")
    if o.qps < 0 or o.max_retries < 0 or o.request_timeout_s <= 0:
        raise ConfigError("--qps and --max_retries must be >= 0, --request_timeout_s > 0")
    try:
        image_size = parse_size(o.image_size)
        if o.instance_format == "tensor" and o.protocol == "mlengine" and not image_size:
            raise ValueError("--instance_format tensor needs --image_size WxH")
        labels = tuple(n.strip() for n in o.label_names.split(",")) if o.label_names else ()
        protocol = make_protocol(o.protocol, o.instance_format, labels, o.score_threshold)
        auth = resolve_auth(o.auth, o.endpoint)
    except ValueError as e:
        raise ConfigError(str(e))
    output = _absolute(o.output)
    processes = worker_processes(options)
    return JobConfig(
        inputs=tuple(o.input),
        input_format=o.input_format,
        endpoint=o.endpoint,
        protocol=protocol,
        image_size=image_size,
        max_instances_per_request=o.max_instances_per_request,
        max_request_bytes=o.max_request_bytes,
        max_concurrent_requests=o.max_concurrent_requests,
        qps=o.qps,
        qps_share=o.qps / processes if o.qps else 0.0,
        max_retries=o.max_retries,
        request_timeout_s=o.request_timeout_s,
        auth=auth,
        output=output,
        output_format=o.output_format,
        errors=_absolute(o.errors) if o.errors else f"{output}-errors",
        skip_existing=o.skip_existing,
        run_id=run_id or new_run_id(),
        uri_field=o.uri_field,
        b64_field=o.b64_field,
        key_field=o.key_field,
    )


def _absolute(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)
