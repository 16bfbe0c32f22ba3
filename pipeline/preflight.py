"""Start-up checks, run on the launcher before the pipeline is built: the inputs match, the
outputs are writable, credentials are there when Google services are used, a v2 model is
ready and takes what will be sent, and earlier runs' leftovers are planned for."""
import asyncio
import dataclasses
import logging
import functools
from typing import Optional

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (GoogleCloudOptions, PipelineOptions,
                                                  StandardOptions)

from core.paths import dead_letter_glob, parts_dir, quote_glob
from engine.auth import AuthError, SCOPES, TokenSource
from imaging.tensor import PRESETS
from pipeline.config import JobConfig
from pipeline.earlier_runs import plan_leftovers
from pipeline.google_access import first_line
from pipeline.model_check import check_model, NotReady
from pipeline.options import ConfigError
from pipeline.owner import ELSEWHERE, Owner, this_process, where_job_lives, write_owner
from protocols.v2 import is_raw_predict, V2
from transforms.backfill import any_match
from transforms.listing import first_match, open_path
from transforms.read import check_input, TFRECORD
from transforms.tfrecords import check_first_record

_LOG = logging.getLogger("batch_predict")
PREFLIGHT_TIMEOUT_S = 10.0


def preflight(config: JobConfig) -> JobConfig:
    """Checks that need I/O, made before the job starts: every --input matches something;
    a v2 model is ready. Returns the config completed from what was found."""
    for source in config.sources:
        given, pattern = source.given, source.pattern
        try:
            matched = first_match(pattern)
        except Exception as e:  # Beam raises BeamIOError with the cause inside
            raise ConfigError(f"--input {given}: cannot list {pattern}: {e}")
        if matched is None:
            raise ConfigError(f"--input {given}: no file matched {pattern}")
        key, listed = matched
        if not listed.readable:  # a link, a FIFO: never opened, counted by the job
            continue
        try:  # a CSV whose header, or a TFRecord whose first Example, lacks the image (or
            # key) column: say so now
            if source.format == TFRECORD:
                check_first_record(open_path(key, listed), config.tfrecord)
            else:
                check_input(source, open_path(key, listed), config.row_spec)
        except (OSError, ValueError) as e:
            raise ConfigError(f"--input {given}: {e}")
    if config.retry_dead_letters:
        pattern = dead_letter_glob(config.retry_dead_letters)
        if not any_match(pattern):
            raise ConfigError(f"--retry_dead_letters: no dead letters matched {pattern}")
    if not config.dry_run:  # a dry run writes nothing, not even a probe
        check_writable(config.errors_run_prefix, "--errors")
    # a dry run sends no request; on Dataflow, workers use their own account
    if config.client.auth == "adc" and config.local and not config.dry_run:
        check_credentials()
    if isinstance(config.protocol, V2):
        config = config.with_protocol(check_v2_model(config))
    warn_unnormalised(config)
    return config


def check_writable(prefix: str, flag: str):
    """ConfigError when no file can be written under `prefix` (a probe, removed at once)."""
    probe = f"{prefix}-preflight.tmp"
    try:
        FileSystems.create(probe).close()
        FileSystems.delete([quote_glob(probe)])  # Beam's delete takes a pattern
    except Exception as e:  # Beam's filesystems raise several types
        raise ConfigError(f"cannot write under {flag} {prefix}: {first_line(e)}")


CREDENTIALS_TIMEOUT_S = 20


def check_credentials():
    """ConfigError when Application Default Credentials are missing or give no token."""
    import google.auth
    from google.auth.transport.requests import Request
    try:
        credentials, _ = google.auth.default(scopes=list(SCOPES))
        request = Request()
        credentials.refresh(functools.partial(request, timeout=CREDENTIALS_TIMEOUT_S))
    except Exception as e:  # google.auth.exceptions.DefaultCredentialsError, RefreshError, ...
        raise ConfigError(f"--auth adc: no usable Application Default Credentials "
                          f"({type(e).__name__}: {first_line(e)}); run `gcloud auth "
                          f"application-default login`, or use --auth none")


def check_v2_model(config: JobConfig) -> V2:
    """The v2 server and model are ready; the protocol completed from the model metadata."""
    client = config.client
    try:
        token = asyncio.run(TokenSource(client.auth, client.endpoint).token())
    except AuthError as e:
        raise ConfigError(f"cannot get credentials for --endpoint: {e}")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if is_raw_predict(client.endpoint):  # the model's own routes are not reachable
        if not client.protocol.input_name:
            raise ConfigError("--protocol v2 through :rawPredict needs --model_input (the "
                              "model metadata cannot be read through Vertex)")
        if config.tensor_request is None:
            return client.protocol
        try:
            return client.protocol.with_model(client.protocol.input_name, (),
                                              config.tensor_request.spec(source="the flags"))
        except ValueError as e:
            raise ConfigError(str(e))
    try:
        return check_model(client.protocol, client.endpoint, headers,
                           min(client.request_timeout_s, PREFLIGHT_TIMEOUT_S),
                           client.max_response_bytes, config.tensor_request)
    except (NotReady, ValueError) as e:
        raise ConfigError(str(e))


def warn_unnormalised(config: JobConfig):
    """Float tensors with no normalisation flag: one warning line, since a model's scaling
    is never in its metadata and a wrong one answers confident, wrong labels."""
    tensor, request = config.protocol.tensor, config.tensor_request
    if tensor is not None and tensor.dtype != "UINT8" and not request.normalisation_given:
        _LOG.warning("%s tensors are sent as 0..255 pixel values: give the scaling the model "
                     "was trained with (--normalize %s, or --mean/--std)", tensor.dtype,
                     "|".join(PRESETS))


def clean_up_leftovers(config: JobConfig, here: Optional[Owner] = None):
    """Remove what finished or dead earlier runs left; which killed runs' parts to adopt.
    `here`: this launcher (`owner_of`), to tell from their owner files which runs are gone."""
    try:
        return plan_leftovers(
            config.output_template, config.errors_template, config.run_id,
            adopt=config.skip_existing and config.bigquery is None,
            stale_after_s=config.parts_stale_after_s, here=here)
    except Exception as e:  # Beam's filesystems raise several types
        raise ConfigError(f"cannot list earlier runs under --output {config.output}: {e}")


def owner_of(config: JobConfig, options: PipelineOptions) -> Owner:
    """Who runs this job: this launcher process, its runner, and where the job lives."""
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    cloud = options.view_as(GoogleCloudOptions)
    where = where_job_lives(runner, config.local, config.single_process,
                            bool(cloud.template_location))
    return dataclasses.replace(this_process(runner, where, config.run_id),
                               region=cloud.region if where == ELSEWHERE else None)


def record_owner(config: JobConfig, owner: Owner):
    """The owner file beside the parts this run will commit (`pipeline.owner`)."""
    if not config.commit_records:
        return
    try:
        write_owner(parts_dir(config.output_run_prefix), owner)
    except Exception as e:  # Beam's filesystems raise several types
        raise ConfigError(f"cannot write under --output {config.output}: {first_line(e)}")


def record_job(config: JobConfig, owner: Owner, result):
    """The owner file again, with the job id a service runner returned on submission."""
    job_id = getattr(result, "job_id", None)
    if not config.commit_records or owner.job_lives_in != ELSEWHERE or not callable(job_id):
        return
    try:
        write_owner(parts_dir(config.output_run_prefix),
                    dataclasses.replace(owner, job_id=job_id()))
    except Exception as e:  # the job runs on; a re-run then judges its parts by their age
        _LOG.warning("could not record the job id beside its parts: %s", first_line(e))
