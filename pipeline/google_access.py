"""Whether a job uses Google storage or services, and a bounded check, made once on the
launcher before anything else touches them, that Application Default Credentials exist.

Without it a missing login shows late and long: Beam's GCS filesystem retries its own
credential lookup for about 25 s, and BigQuery or Dataflow fail after minutes of retries.
"""
import os
import threading
from typing import Optional, Tuple

from apache_beam.options.pipeline_options import (GoogleCloudOptions, PipelineOptions,
                                                  StandardOptions)

from pipeline.options import ConfigError, is_dry_run, PredictOptions

#: How long google.auth.default() may take (its GCE metadata probe retries, 3 s each).
ADC_TIMEOUT_S = 15.0
LOGIN = "run `gcloud auth application-default login` (or set GOOGLE_APPLICATION_CREDENTIALS)"


def _gs(path: Optional[str]) -> bool:
    return bool(path) and path.startswith("gs://")


def google_uses(options: PipelineOptions) -> Tuple[str, ...]:
    """The flags that make this job use Google storage or services (empty: none). gs://
    paths do not count with STORAGE_EMULATOR_HOST set. A dry run only reads its inputs."""
    o = options.view_as(PredictOptions)
    cloud = options.view_as(GoogleCloudOptions)
    runner = options.view_as(StandardOptions).runner or ""
    dry = is_dry_run(options)  # (DataflowRunner's own dry run, too, contacts nothing)
    storage = [f"--input {given}" for given in o.input or () if _gs(given)]
    storage += [f"--{name} {getattr(o, name)}" for name in ("label_names_file",
                                                            "retry_dead_letters")
                if _gs(getattr(o, name))]
    if not dry or o.skip_existing:
        storage += [f"--output {o.output}"] if _gs(o.output) else []
    if not dry:
        storage += [f"--errors {o.errors}"] if _gs(o.errors) else []
        storage += [f"--{name} {value}" for name, value in (
            ("temp_location", cloud.temp_location), ("staging_location",
                                                     cloud.staging_location),
            ("bigquery_temp_location", o.bigquery_temp_location)) if _gs(value)]
    services = []
    if not dry and o.output_format == "bigquery":
        services.append("--output_format bigquery")
    if not dry and "dataflow" in runner.lower():
        services.append(f"--runner {runner}")
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        storage = []
    return tuple(services + storage)


def first_line(error: Exception) -> str:
    """An exception's message as one line for a user: its first line, at most 300 chars."""
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__


def find_credentials(timeout_s: float = ADC_TIMEOUT_S) -> Optional[str]:
    """None when google.auth finds Application Default Credentials within `timeout_s`;
    otherwise why not (one line)."""
    outcome = {}

    def look():
        import google.auth  # pylint: disable=import-outside-toplevel
        try:
            google.auth.default()
            outcome["found"] = True
        except Exception as e:  # google.auth.exceptions.DefaultCredentialsError, ...
            outcome["error"] = f"{type(e).__name__}: {first_line(e)}"

    thread = threading.Thread(target=look, name="adc-check", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if outcome.get("found"):
        return None
    return outcome.get("error", f"none found within {timeout_s:g} s")


def check_google_credentials(options: PipelineOptions):
    """ConfigError (one line) when the job uses Google storage or services and no
    Application Default Credentials can be found."""
    uses = google_uses(options)
    if not uses:
        return
    missing = find_credentials()
    if missing is not None:
        raise ConfigError(f"{uses[0]} needs Google credentials, and there are no Application "
                          f"Default Credentials ({missing}): {LOGIN}")
