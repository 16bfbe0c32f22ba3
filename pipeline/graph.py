"""build_pipeline: wires the stages for a JobConfig. No I/O happens here."""
import apache_beam as beam

from pipeline.config import JobConfig
from transforms.encode import EncodeInstances
from transforms.existing import AdoptParts, SelectTodo
from transforms.limit import CountForEstimate, FirstN
from transforms.pack import PackRequests
from transforms.passthrough import JoinPassthrough
from transforms.predict import Predict
from transforms.progress import NoteTotal
from transforms.read import ReadInputs
from transforms.parts import CommitParts, DeleteParts, parts_dir
from transforms.records import prediction_schema
from transforms.write import WriteDeadLetters, WriteResults


def select_todo(refs, config: JobConfig):
    """The refs to predict: all, or (backfill) those not yet written / in the dead letters,
    of the first --limit inputs."""
    if config.limit:
        refs = (refs | "Limit" >> FirstN(config.limit)).refs
    if not (config.skip_existing or config.retry_dead_letters):
        return refs
    return (refs | "SelectTodo" >> SelectTodo(
        config.output_template if config.skip_existing else None,
        config.retry_dead_letters)).refs


def with_passthrough(predictions, refs, config: JobConfig):
    """Predictions with their rows' --passthrough_fields joined back by key."""
    if not config.passthrough_fields:
        return predictions
    return (predictions, refs) | "JoinPassthrough" >> JoinPassthrough(
        config.passthrough_fields)


def commit_parts(predictions, failures, config: JobConfig):
    """Part paths of the predictions and dead letters committed while the job runs."""
    if not config.commit_records:
        return []
    return [
        predictions | "CommitPredictions" >> CommitParts(
            parts_dir(config.output_run_prefix), prediction_schema(),
            config.commit_records, config.commit_seconds),
        failures | "CommitDeadLetters" >> CommitParts(
            parts_dir(config.errors_run_prefix), None,
            config.commit_records, config.commit_seconds),
    ]


def with_missing_fields(row: dict, names) -> dict:
    return {**{name: None for name in names}, **row}


def with_adopted(results, p, config: JobConfig, adopt_parts):
    """Results plus the rows of killed runs' parts this run adopts (once per key)."""
    if not adopt_parts:
        return results
    adopted = (p
               | "AdoptParts" >> AdoptParts(adopt_parts, config.output_template)
               | "AdoptedFields" >> beam.Map(with_missing_fields, config.passthrough_fields))
    return (results, adopted) | "WithAdopted" >> beam.Flatten()


def build_pipeline(p: beam.Pipeline, config: JobConfig, adopt_parts=(), adopt_folders=(),
                   count_only: bool = False):
    """Read -> encode -> pack -> predict -> write, with every failure to the dead letters.

    Predictions and dead letters are also committed in parts as they are made; the parts
    (this run's, and `adopt_folders` of killed runs whose `adopt_parts` it writes into its
    own shards) are deleted once the shards are in place. See docs/crash-safety.md.
    `count_only` (--dry_run): read and select the inputs, count them, nothing more.
    """
    inputs = p | "ReadInputs" >> ReadInputs(config.sources, config.row_spec)
    todo = select_todo(inputs.refs, config)
    if count_only:
        todo | "CountForEstimate" >> CountForEstimate()
        return p
    todo = todo | "NoteTotal" >> NoteTotal(config.run_id, config.single_process)
    encoded = todo | "EncodeInstances" >> EncodeInstances(
        config.protocol, config.max_request_bytes, config.image_size)
    predicted = (encoded.instances
                 | "PackRequests" >> PackRequests(
                     config.protocol, config.max_instances_per_request,
                     config.max_request_bytes)
                 | "Predict" >> Predict(config.predict))
    failures = ((inputs.failed, encoded.failed, predicted.failed)
                | "MergeFailures" >> beam.Flatten())
    committed = commit_parts(predicted.predictions, failures, config)
    results = with_adopted(with_passthrough(predicted.predictions, todo, config), p, config,
                           adopt_parts)
    written = results | "WriteResults" >> WriteResults(
        config.output_run_prefix, config.output_format, config.passthrough_fields,
        config.bigquery)
    written_errors = failures | "WriteDeadLetters" >> WriteDeadLetters(config.errors_run_prefix)
    if committed and config.bigquery is None:
        folders = (parts_dir(config.output_run_prefix), parts_dir(config.errors_run_prefix),
                   *adopt_folders)
        (*written, written_errors, *committed) | "DeleteParts" >> DeleteParts(folders)
    return p
