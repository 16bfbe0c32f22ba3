"""WriteResults and WriteDeadLetters: sharded Parquet / BigQuery-ready JSONL, or BigQuery
itself, and the launcher-side files of a run (the BigQuery schema and the summary).

Shard names carry the run id (`<output>-<run_id>-SSSSS-of-NNNNN.parquet`), so running the
same command again adds files and never overwrites an earlier run's. Beam's file sinks write
each shard into a `beam-temp-*` folder and rename it into place when the job finalizes, so a
file with a shard name is always complete (see `transforms.backfill`).

Output prefixes may carry `{date}` (the run's UTC date, YYYY-MM-DD) and `{run_id}`, so a
scheduled job writes each run under its own folder: `--output gs://b/preds/{date}/pred`.
"""
import dataclasses
import json
import re
from typing import Optional, Sequence, Tuple

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.parquetio import WriteToParquetBatched
from apache_beam.io.textio import WriteToText
from apache_beam.transforms.window import GlobalWindows

from core.records import bigquery_schema, prediction_json, prediction_schema, to_json_row

OUTPUT_FORMATS = ("parquet", "jsonl", "both", "bigquery")
FILE_FORMATS = {"parquet": ("parquet",), "jsonl": ("jsonl",), "both": ("parquet", "jsonl"),
                "bigquery": ()}

# Parquet: snappy, and row groups of up to 4 MB of buffered Arrow data (a prediction row is
# ~200 bytes there, so ~20k rows a group): Beam's default of 64 MB holds a large job's rows in
# memory on each writer, and memory is meant to stay flat as jobs grow (figures in
# benchmarks/README.md). Lists in the standard 3-level form (`list.element`) that BigQuery's
# list inference and other readers expect.
PARQUET_CODEC = "snappy"
PARQUET_ROW_GROUP_BYTES = 4 * 1024 * 1024
PARQUET_RECORD_BATCH_SIZE = 1000


_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,299}$")
_BIGQUERY_TABLE = re.compile(
    r"^(?:(?P<project>[A-Za-z0-9][A-Za-z0-9.:_-]*?):)?"
    r"(?P<dataset>\w{1,1024})\.(?P<table>[^.:\s]{1,1024})$")


# -- output paths --------------------------------------------------------------------------


# -- sink flags ----------------------------------------------------------------------------

def parse_passthrough_fields(text: Optional[str]) -> Tuple[str, ...]:
    """`a,b` -> ("a", "b"); ValueError for a name BigQuery or the output schema rejects."""
    if not text:
        return ()
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    reserved = set(prediction_schema().names)
    for name in names:
        if not _FIELD_NAME.match(name):
            raise ValueError(f"--passthrough_fields: {name!r} is not a valid column name "
                             "(letters, digits and _, not starting with a digit)")
        if name in reserved:
            raise ValueError(f"--passthrough_fields: {name!r} is already an output column")
    if len(set(names)) != len(names):
        raise ValueError("--passthrough_fields: a field is named twice")
    return names


@dataclasses.dataclass(frozen=True)
class BigQueryTarget:
    """Where `--output_format bigquery` appends rows, and its GCS staging location."""
    table: str  # `project:dataset.table` or `dataset.table` (project from --project)
    temp_location: str  # gs:// folder for the load job's files


def parse_bigquery_table(text: Optional[str]) -> str:
    if not text or not _BIGQUERY_TABLE.match(text):
        raise ValueError(_bad_table(text))
    return text


def _bad_table(text: Optional[str]) -> str:
    return f"--bigquery_table must be project:dataset.table or dataset.table, not {text!r}"


def bigquery_target(table: Optional[str], temp_location: Optional[str]) -> BigQueryTarget:
    """The target of `--output_format bigquery` for a table `parse_bigquery_table` accepted
    (None or empty when not given); ValueError says what is missing."""
    if not temp_location or not temp_location.startswith("gs://"):
        raise ValueError("--output_format bigquery loads through files on GCS: give "
                         "--bigquery_temp_location gs://BUCKET/tmp (or --temp_location gs://...)")
    if not table:
        raise ValueError(_bad_table(table))
    return BigQueryTarget(table, temp_location)


# -- transforms ----------------------------------------------------------------------------

def json_line(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False, separators=(",", ":"))


def prediction_json_line(record: dict) -> str:
    return prediction_json(record)


class _RowsToTables(beam.DoFn):
    """Rows -> Arrow tables of about `row_group_bytes` each (one Parquet row group each).

    What Beam's WriteToParquet does first, with the same batches and sizes, but each batch of
    rows is converted by Arrow at once (`RecordBatch.from_pylist`) rather than row by row
    into Python lists, and `process` takes no window parameters, which Beam calls on its
    slower path for every row.
    """

    def __init__(self, schema: pa.Schema, row_group_bytes: int = PARQUET_ROW_GROUP_BYTES,
                 batch_rows: int = PARQUET_RECORD_BATCH_SIZE):
        self._schema = schema
        self._row_group_bytes = row_group_bytes
        self._batch_rows = batch_rows

    def start_bundle(self):
        self._rows, self._batches, self._bytes = [], [], 0

    def process(self, row: dict):
        self._rows.append(row)
        if len(self._rows) >= self._batch_rows:
            self._convert()
            if self._bytes >= self._row_group_bytes:
                yield self._table()

    def finish_bundle(self):
        self._convert()
        if self._batches:
            yield GlobalWindows.windowed_value(self._table())

    def _convert(self):
        if not self._rows:
            return
        batch = pa.RecordBatch.from_pylist(self._rows, schema=self._schema)
        self._rows = []
        self._batches.append(batch)
        self._bytes += sum(buffer.size for column in batch.columns
                           for buffer in column.buffers() if buffer is not None)

    def _table(self) -> pa.Table:
        table = pa.Table.from_batches(self._batches, schema=self._schema)
        self._batches, self._bytes = [], 0
        return table


class WriteParquet(beam.PTransform):
    """Rows -> Parquet shards (`<prefix>-SSSSS-of-NNNNN.parquet`) with an explicit schema."""

    def __init__(self, run_prefix: str, schema: pa.Schema,
                 row_group_bytes: int = PARQUET_ROW_GROUP_BYTES):
        super().__init__()
        self._run_prefix = run_prefix
        self._schema = schema
        self._row_group_bytes = row_group_bytes

    def expand(self, rows):
        return (rows
                | "ToTables" >> beam.ParDo(_RowsToTables(self._schema, self._row_group_bytes))
                | "Write" >> WriteToParquetBatched(
                    self._run_prefix, schema=self._schema, codec=PARQUET_CODEC,
                    use_compliant_nested_type=True, file_name_suffix=".parquet"))


class WriteResults(beam.PTransform):
    """Prediction records -> Parquet (explicit Arrow schema) and/or JSONL shards, or a
    BigQuery table (file loads, appending)."""

    def __init__(self, run_prefix: str, output_format: str,
                 extra_fields: Sequence[str] = (),
                 bigquery: Optional[BigQueryTarget] = None):
        super().__init__()
        if output_format not in OUTPUT_FORMATS:
            raise ValueError(f"unknown output format {output_format!r}")
        if (output_format == "bigquery") != (bigquery is not None):
            raise ValueError("a BigQueryTarget is needed exactly for --output_format bigquery")
        self._run_prefix = run_prefix
        self._format = output_format
        self._extra_fields = tuple(extra_fields)
        self._bigquery = bigquery

    def expand(self, records):
        written = []
        formats = FILE_FORMATS[self._format]
        if "parquet" in formats:
            written.append(records | "WriteParquet" >> WriteParquet(
                self._run_prefix, prediction_schema(self._extra_fields)))
        if "jsonl" in formats:
            written.append(records
                           | "ToJson" >> beam.Map(prediction_json_line)
                           | "WriteJsonl" >> WriteToText(self._run_prefix,
                                                         file_name_suffix=".jsonl"))
        if self._bigquery is not None:
            written.append(records
                           | "ToBigQueryRows" >> beam.Map(to_json_row)
                           | "WriteBigQuery" >> write_to_bigquery(
                               self._bigquery, self._extra_fields))
        return written


def write_to_bigquery(target: BigQueryTarget, extra_fields: Sequence[str] = ()):
    """Beam's WriteToBigQuery for prediction rows: batch file loads, create if needed, append."""
    from apache_beam.io.gcp.bigquery import BigQueryDisposition, WriteToBigQuery
    return WriteToBigQuery(
        target.table,
        schema={"fields": bigquery_schema(extra_fields)},
        method=WriteToBigQuery.Method.FILE_LOADS,
        create_disposition=BigQueryDisposition.CREATE_IF_NEEDED,
        write_disposition=BigQueryDisposition.WRITE_APPEND,
        custom_gcs_temp_location=target.temp_location)


class WriteDeadLetters(beam.PTransform):
    """Dead-letter rows (one PCollection or several) -> `<errors>-<run_id>-*.jsonl` shards."""

    def __init__(self, run_prefix: str):
        super().__init__()
        self._run_prefix = run_prefix

    def expand(self, failures):
        if isinstance(failures, (list, tuple)):
            failures = failures | "Merge" >> beam.Flatten()
        return (failures
                | "ToJson" >> beam.Map(json_line)
                | "Write" >> WriteToText(self._run_prefix, file_name_suffix=".jsonl",
                                         skip_if_empty=True))


# -- launcher-side files -------------------------------------------------------------------


