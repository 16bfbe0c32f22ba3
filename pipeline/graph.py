"""build_pipeline: wires the stages for a JobConfig. No I/O happens here."""
import apache_beam as beam

from core.paths import parts_dir
from core.records import prediction_schema
from pipeline.config import JobConfig
from transforms.backfill import AdoptParts
from transforms.commit import CommitParts, DeleteParts
from transforms.encode import EncodeInstances
from transforms.limit import CountForEstimate
from transforms.pack import PackRequests
from transforms.predict import Predict
from transforms.progress import NoteTotal
from transforms.read import ReadInputs
from transforms.select import SelectTodo
from transforms.write import WriteDeadLetters, WriteResults


def select_todo(inputs, config: JobConfig):
    """One record per key to predict, with its --passthrough_fields values: of the first
    --limit keys, and (backfill) those not yet written / in the dead letters."""
    return inputs | "SelectTodo" >> SelectTodo(
        config.passthrough_fields, config.limit,
        config.output_template if config.skip_existing else None,
        config.retry_dead_letters)


def commit_parts(predictions, failures, config: JobConfig):
    """Part paths of the predictions and dead letters committed while the job runs."""
    if not config.commit_records:
        return []
    return [
        predictions | "CommitPredictions" >> CommitParts(
            parts_dir(config.output_run_prefix), prediction_schema(config.passthrough_fields),
            config.commit_records, config.commit_seconds),
        failures | "CommitDeadLetters" >> CommitParts(
            parts_dir(config.errors_run_prefix), None,
            config.commit_records, config.commit_seconds),
    ]


def in_columns(row: dict, columns) -> dict:
    """An adopted row with this run's columns: null for passed-through columns its run did
    not have, without those this run does not pass through."""
    return {name: row.get(name) for name in columns}


def with_adopted(results, p, config: JobConfig, adopt_parts):
    """Results plus the rows of killed runs' parts this run adopts (once per key)."""
    if not adopt_parts:
        return results
    adopted = (p
               | "AdoptParts" >> AdoptParts(adopt_parts, config.output_template)
               | "AdoptedFields" >> beam.Map(
                   in_columns, prediction_schema(config.passthrough_fields).names))
    return (results, adopted) | "WithAdopted" >> beam.Flatten()


def build_pipeline(p: beam.Pipeline, config: JobConfig, adopt_parts=(), adopt_folders=(),
                   count_only: bool = False):
    """Read -> encode -> pack -> predict -> write, with every failure to the dead letters.

    Predictions and dead letters are also committed in parts as they are made; the parts
    (this run's, and `adopt_folders` of killed runs whose `adopt_parts` it writes into its
    own shards) are deleted once the shards are in place. See docs/crash-safety.md.
    `count_only` (--dry_run): read and select the inputs, count them, nothing more.
    """
    inputs = p | "ReadInputs" >> ReadInputs(config.sources, config.row_spec,
                                                      config.tfrecord)
    selected = select_todo(inputs, config)
    if count_only:
        selected.refs | "CountForEstimate" >> CountForEstimate()
        return p
    todo = selected.refs | "NoteTotal" >> NoteTotal(config.run_id, config.single_process)
    encoded = todo | "EncodeInstances" >> EncodeInstances(
        config.protocol, config.max_request_bytes, config.image_size)
    predicted = (encoded.instances
                 | "PackRequests" >> PackRequests(
                     config.protocol, config.max_instances_per_request,
                     config.max_request_bytes)
                 | "Predict" >> Predict(config.predict))
    failures = ((inputs.failed, selected.failed, encoded.failed, predicted.failed)
                | "MergeFailures" >> beam.Flatten())
    committed = commit_parts(predicted.predictions, failures, config)
    results = with_adopted(predicted.predictions, p, config, adopt_parts)
    written = results | "WriteResults" >> WriteResults(
        config.output_run_prefix, config.output_format, config.passthrough_fields,
        config.bigquery)
    written_errors = failures | "WriteDeadLetters" >> WriteDeadLetters(config.errors_run_prefix)
    if committed and config.bigquery is None:
        folders = (parts_dir(config.output_run_prefix), parts_dir(config.errors_run_prefix),
                   *adopt_folders)
        (*written, written_errors, *committed) | "DeleteParts" >> DeleteParts(folders)
    return p
