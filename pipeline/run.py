"""Entry point: `python -m pipeline.run` and the `batch-predict` console script.

Local run (DirectRunner):
    python -m pipeline.run --input photos/ --endpoint http://127.0.0.1:8080/v1/projects/p/models/m:predict \
        --output out/predictions

Dataflow: the same command plus --runner DataflowRunner --project P --region R
    --temp_location gs://B/tmp --setup_file ./setup.py (see docs/dataflow.md).
"""
import argparse
import collections
import contextlib
import functools
import gc
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import (StandardOptions, GoogleCloudOptions,
                                                  PipelineOptions)

from core.paths import parts_dir
from core.records import accounting
from engine.engine import STOPPED_PREFIX
from pipeline import report
from pipeline.config import build_config, check_required, JobConfig
from pipeline.estimate import estimate, estimate_line
from pipeline.google_access import check_google_credentials
from pipeline.graph import build_pipeline
from pipeline.earlier_runs import adopt_command, not_adopted_summary, remove_own_temp_folders
from pipeline.outcome import endpoint_failures, ENDPOINT_STAGES, first_request_at, timings
from pipeline.options import ConfigError, DRY_RUN_FLAG, parse_options, PredictOptions
from pipeline.outputs import jsonl_load_command, last_error, write_bigquery_schema, write_text
from pipeline.owner import running_here
from pipeline.preflight import (clean_up_leftovers, owner_of, preflight, record_job,
                                record_owner)
from transforms import metrics
from transforms.commit import delete_folder
from imaging.decode import quiet_pillow_warnings

_LOG = logging.getLogger("batch_predict")
EXIT_STOPPED = 3


class JobStoppedEarly(Exception):
    """The job crossed its failure threshold (`engine.engine.JobStopped`) and was stopped."""


def stopped_reason(error: BaseException) -> Optional[str]:
    """The worker's stop message inside a failed job's error, however the runner wrapped it."""
    match = re.search(re.escape(STOPPED_PREFIX) + r"[^\n]*", str(error))
    return re.sub(r" \[while running '[^\n]*'\]$", "", match.group(0)) if match else None


class _HideStopTraceback(logging.Filter):
    """Drops the runner's error log of a worker's JobStopped: the launcher says it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return STOPPED_PREFIX not in record.getMessage()


#: Allocations between Python's young-generation collections while a job runs (default 700).
YOUNG_GC_THRESHOLD = 20_000


class _Collector:
    """The GC settings jobs in this process share: how many run, and what was before."""
    lock = threading.Lock()
    jobs = 0
    thresholds = None
    froze = False  # whether the first job froze the objects (not if the caller already had)


@contextlib.contextmanager
def fewer_collections():
    """Python's cyclic GC while a job runs in this process: the objects alive before it
    (Beam's modules, the job graph) are frozen out of its full passes, unless the caller
    froze objects itself, and the youngest generation is collected every
    YOUNG_GC_THRESHOLD allocations. Undone when the last of the jobs running here ends."""
    with _Collector.lock:
        if not _Collector.jobs:
            _Collector.thresholds = gc.get_threshold()
            _Collector.froze = gc.get_freeze_count() == 0
            if _Collector.froze:
                gc.freeze()
            gc.set_threshold(YOUNG_GC_THRESHOLD, *_Collector.thresholds[1:])
        _Collector.jobs += 1
    try:
        yield
    finally:
        with _Collector.lock:
            _Collector.jobs -= 1
            if not _Collector.jobs:
                gc.set_threshold(*_Collector.thresholds)
                if _Collector.froze:
                    gc.unfreeze()


def run_and_wait(p: beam.Pipeline, on_submitted=None):
    """Run the pipeline to its end; JobStoppedEarly when a worker stopped it.
    `on_submitted(result)` is called once the runner has the job, before waiting on it."""
    try:
        with fewer_collections():
            result = p.run()
            if on_submitted is not None:
                on_submitted(result)
            result.wait_until_finish()
    except Exception as e:  # the runner wraps the worker's exception in its own types
        reason = stopped_reason(e)
        if reason is None:
            raise
        raise JobStoppedEarly(reason) from None
    return result


def parse(argv: Sequence[str]):
    """(PipelineOptions, JobConfig) for a command line; ConfigError for a bad one."""
    options = parse_options(argv)
    return options, build_config(options)


def counter_values(result) -> collections.Counter:
    """The job's counters by name (committed where the runner has them)."""
    counts = collections.Counter()
    query = result.metrics().query(MetricsFilter().with_namespace(metrics.NAMESPACE))
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        counts[counter.key.metric.name] += value or 0
    return counts


def dry_run_summary(result, config: JobConfig, qps: float) -> dict:
    """What a real run of this command would send, from a dry run's counters."""
    counts = counter_values(result)
    outcome = accounting(counts)
    summary = {"dry_run": True, "inputs": counts["inputs"], "skipped": outcome["skipped"],
               "failed": outcome["failed"]}
    summary.update(estimate(
        counts["dry_run_images"], counts["dry_run_bytes"], counts["dry_run_unsized"],
        config.max_instances_per_request, config.max_request_bytes, qps,
        config.client.max_concurrent_requests, config.worker_processes))
    summary["accounted"] = (summary["inputs"]
                            == summary["images"] + summary["failed"] + summary["skipped"])
    return summary


def summarize(result, config: JobConfig, elapsed_s: float,
              started_at: Optional[float] = None) -> dict:
    """The run summary from the job's metrics (committed where the runner has them);
    `started_at`: the job's start, epoch seconds."""
    counts = counter_values(result)
    started_at = time.time() - elapsed_s if started_at is None else started_at
    retries_by_cause = {k[len("retries_"):]: v for k, v in counts.items()
                        if k.startswith("retries_") and v}
    summary = {
        "run_id": config.run_id,
        "inputs": counts["inputs"],
        "predicted": counts["predicted"],
        **accounting(counts),
        "requests": counts["requests"],
        "retries": counts["retries"],
        "retries_by_cause": retries_by_cause,
        "splits": counts["splits"],
        "parts_committed": counts["parts_committed"],
        "adopted": counts["adopted"],
        **timings(elapsed_s, started_at, first_request_at(result), counts["predicted"]),
        "output": config.output_run_prefix,
        "errors": config.errors_run_prefix,
    }
    if config.skip_existing:
        summary["unreadable_shards"] = counts["unreadable_shards"]
    summary["accounted"] = (summary["inputs"]
                            == summary["predicted"] + summary["failed"] + summary["skipped"])
    return summary


def offline_safe_runner(options: PipelineOptions):
    """The runner to use: DirectRunner's batch engine (FnApiRunner) when DirectRunner is asked for.

    Beam 2.77's DirectRunner first tries PrismRunner, which downloads a binary from GitHub on
    every run, and falls back to the FnApiRunner when that fails. A local or CI run must not
    reach the internet, so the FnApiRunner is used directly (`--direct_num_workers` and
    `--direct_running_mode` apply as usual); `--runner PrismRunner` opts in to Prism.
    Any other runner is left to Beam (None).
    """
    runner = options.view_as(StandardOptions).runner
    if runner is None or runner in ("DirectRunner", "SwitchingDirectRunner"):
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner
        return FnApiRunner()
    return None


def run(argv: Optional[Sequence[str]] = None, test_pipeline=None) -> dict:
    """Parse, check, build and run the job; returns the summary. Raises ConfigError."""
    options = parse_options(sys.argv[1:] if argv is None else argv)
    check_required(options)  # every missing flag named before any wait for credentials
    check_google_credentials(options)
    config = preflight(build_config(options))
    if config.dry_run and not options.view_as(GoogleCloudOptions).template_location:
        # (with --template_location, Beam's own meaning: build the job, submit nothing)
        return dry_run(options, config, test_pipeline)
    try:
        write_bigquery_schema(config.schema_path, config.passthrough_fields)
    except Exception as e:  # Beam's filesystems raise several types
        raise ConfigError(f"cannot write under --output {config.output}: {e}")
    started, started_at = time.monotonic(), time.time()
    try:
        p = test_pipeline or beam.Pipeline(runner=offline_safe_runner(options), options=options)
    except ValueError as e:  # an unknown --runner
        raise ConfigError(str(e).splitlines()[0])
    owner = owner_of(config, options)
    plan = clean_up_leftovers(config, owner)
    record_owner(config, owner)
    build_pipeline(p, config, plan.adopt_parts, plan.adopt_folders)
    if options.view_as(GoogleCloudOptions).template_location:
        p.run()
        # Only a job description was written (a Flex Template launch or a classic template):
        # the job runs later on Dataflow, so there is nothing to wait for or count here.
        return {"run_id": config.run_id, "template_location":
                options.view_as(GoogleCloudOptions).template_location,
                "output": config.output_run_prefix, "errors": config.errors_run_prefix,
                "accounted": None}
    own_temp = functools.partial(remove_own_temp_folders,
                                 (config.output_run_prefix, config.errors_run_prefix))
    _OnInterrupt.cleanup = own_temp
    try:
        with running_here(config.run_id):
            result = run_and_wait(p, functools.partial(record_job, config, owner))
    except BaseException:
        _quietly(own_temp)  # a failed or stopped job's sinks never finalize
        raise
    finally:
        _OnInterrupt.cleanup = None
    summary = summarize(result, config, time.monotonic() - started, started_at)
    summary["cleaned_up"] = list(plan.removed)
    if plan.not_adopted:
        summary["not_adopted"] = not_adopted_summary(plan)
    crossed = endpoint_failures(summary, config.predict.failure_threshold.max_failed_fraction)
    if crossed:
        error = last_error(config.errors_run_prefix, ENDPOINT_STAGES)
        summary["failure_threshold_crossed"] = crossed + (f"; last error: {error}"
                                                          if error else "")
    if config.bigquery is not None and config.commit_records:
        # the load jobs are done once the job is: this run's parts are no longer needed
        for folder in (parts_dir(config.output_run_prefix), parts_dir(config.errors_run_prefix)):
            delete_folder(folder)
    if config.output_format in ("jsonl", "both"):
        summary["bq_load"] = jsonl_load_command(
            config.output_run_prefix, config.schema_path, config.bigquery_table)
    write_text(report.metrics_path(config.output_run_prefix),
               json.dumps(report.run_metrics(result), indent=1) + "\n")
    if options.view_as(PredictOptions).report:
        summary["report"] = report.report_path(config.output_run_prefix)
    write_text(config.summary_path, json.dumps(summary, indent=2) + "\n")
    if summary.get("report"):
        report.write_report(config.output_run_prefix)
    return summary


def dry_run(options: PipelineOptions, config: JobConfig, test_pipeline=None) -> dict:
    """List and count the inputs here, whatever --runner says; nothing is sent or written."""
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    p = test_pipeline or beam.Pipeline(runner=FnApiRunner(), options=options)
    build_pipeline(p, config, count_only=True)
    result = p.run()
    result.wait_until_finish()
    return dry_run_summary(result, config, options.view_as(PredictOptions).qps)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each flag's default after its help, unless it has none (its help then says why)."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def print_help():
    """This pipeline's own flags with their defaults (Beam's own flags are listed by Beam)."""
    parser = argparse.ArgumentParser(
        prog="batch-predict", formatter_class=_HelpFormatter,
        description="Batch image prediction on Apache Beam. Every Beam pipeline option "
                    "(--runner, --project, --region, --temp_location, --direct_num_workers, "
                    "...) is accepted too. `batch-predict report <run prefix>` writes a run's "
                    "HTML report from its files. --dry_run lists and counts the inputs and "
                    "estimates requests and time, sending nothing.")
    PredictOptions._add_argparse_args(parser)  # pylint: disable=protected-access
    parser.add_argument(
        DRY_RUN_FLAG, action="store_true",
        help="Added to the job's own flags: list and count the inputs, print the requests at "
             "the current caps and the time at --qps; send and write nothing (Beam's own "
             "--dry_run flag, which this pipeline reads).")
    parser.print_help()


def report_main(argv: Sequence[str]) -> int:
    """`batch-predict report <run prefix>`: write the run's HTML report, print its path."""
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: batch-predict report <run prefix>  (the \"output\" of a run's summary)",
              file=sys.stderr)
        return 2
    try:
        print(report.write_report(argv[0].rstrip("-")))
    except report.ReportError as e:
        print(f"batch-predict report: error: {e}", file=sys.stderr)
        return 2
    return 0


def program_name() -> str:
    """How this command was started: `batch-predict`, or `python -m pipeline.run`."""
    name = os.path.basename(sys.argv[0]) if sys.argv else ""
    return name if name == "batch-predict" else "python -m pipeline.run"


INTERRUPTED = ("batch-predict: interrupted; the predictions committed so far are kept "
               "(rerun with --skip_existing to resume)")


class _OnInterrupt:
    """What to clean on Ctrl-C: the running job's `beam-temp-*` folders (None: nothing)."""
    cleanup = None


def _quietly(cleanup):
    try:
        cleanup()
    except Exception:  # pylint: disable=broad-except  (leftovers a later run removes)
        pass


def exit_interrupted(signum=None, frame=None):
    """Ctrl-C: one line and exit status 130, at once, after removing the `beam-temp-*`
    folders this run made. Beam's runners turn a KeyboardInterrupt raised inside a bundle
    into a long chained error, so the process ends here instead."""
    if _OnInterrupt.cleanup is not None:
        _quietly(_OnInterrupt.cleanup)
    sys.stderr.write(INTERRUPTED + "\n")
    sys.stderr.flush()
    os._exit(130)  # pylint: disable=protected-access


class _DropMessages(logging.Filter):
    """Drops log records whose message starts with one of `prefixes`."""

    def __init__(self, *prefixes: str):
        super().__init__()
        self._prefixes = prefixes

    def filter(self, record):
        return not str(record.msg).startswith(self._prefixes)


def quiet_logs():
    """Our INFO lines (progress) and Beam's warnings, less the ones that mean nothing here:
    an empty dead-letter output is the normal case, not a warning; a local worker process
    needs no semi-persistent directory."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _LOG.setLevel(logging.INFO)
    logging.getLogger("apache_beam.io.filebasedsink").addFilter(
        _DropMessages("No shards found to finalize"))
    # DirectRunner's worker processes (multi_processing) warn of this at each start
    logging.getLogger("apache_beam.runners.portability.local_job_service").addFilter(
        lambda record: "No semi_persistent_directory found" not in record.getMessage())
    quiet_pillow_warnings()


def main(argv: Optional[Sequence[str]] = None, test_pipeline=None) -> int:
    """The command: runs the job, prints the summary; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "report":
        return report_main(argv[1:])
    if "-h" in argv or "--help" in argv:
        print_help()
        return 0
    quiet_logs()
    previous = signal.signal(signal.SIGINT, exit_interrupted)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_HideStopTraceback())
    try:
        summary = run(argv, test_pipeline)
    except ConfigError as e:
        print(f"batch-predict: error: {e}", file=sys.stderr)
        return 2
    except JobStoppedEarly as e:
        print(stopped_line(e), file=sys.stderr)
        return EXIT_STOPPED
    finally:
        signal.signal(signal.SIGINT, previous)
    return print_endings(summary, argv)


def stopped_line(reason) -> str:
    """The one line of a job stopped early, or ended over its failure threshold."""
    return (f"batch-predict: error: {reason} (the predictions committed so far are kept: "
            f"rerun with --skip_existing; see --failure_threshold)")


def print_endings(summary: dict, argv: Sequence[str]) -> int:
    """The summary on stdout, where its files are on stderr; the exit status (`argv`: the
    command line, for the command that adopts what this run left out)."""
    print(json.dumps(summary, indent=2))
    if summary.get("failure_threshold_crossed"):
        print(stopped_line(summary["failure_threshold_crossed"]), file=sys.stderr)
        return EXIT_STOPPED
    if summary.get("dry_run"):
        print(estimate_line(summary), file=sys.stderr)
        return 0
    print(f"predictions: {summary['output']}-*", file=sys.stderr)
    if summary.get("failed") == 0:
        print("dead letters: none (nothing failed)", file=sys.stderr)
    else:  # some failed, or the job runs later (--template_location)
        print(f"dead letters: {summary['errors']}-*", file=sys.stderr)
    if summary.get("unreadable_shards"):
        print(f"batch-predict: warning: {summary['unreadable_shards']} earlier shard(s) or "
              f"committed part(s) under --output could not be read (truncated or corrupt); "
              f"the keys only they held were predicted again", file=sys.stderr)
    if summary.get("not_adopted"):
        print(f"batch-predict: warning: {summary['not_adopted']['predictions']} committed "
              f"predictions of runs that may still be running ("
              f"{', '.join(summary['not_adopted']['runs'])}) are not in this run's shards; "
              f"once those runs are known to be finished, adopt them with:\n  "
              f"{adopt_command(program_name(), argv)}", file=sys.stderr)
    if summary.get("bq_load"):
        print(f"load the JSONL into BigQuery: {summary['bq_load']}", file=sys.stderr)
    if summary.get("report"):
        print(f"run report: {summary['report']}", file=sys.stderr)
    if summary["accounted"] is False:
        print("batch-predict: error: inputs != predicted + failed + skipped; "
              "some records are unaccounted for", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
