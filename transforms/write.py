"""WriteResults and WriteDeadLetters: sharded Parquet / BigQuery-ready JSONL, and the
launcher-side files of a run (the BigQuery schema and the summary).

Shard names carry the run id (`<output>-<run_id>-SSSSS-of-NNNNN.parquet`), so running the
same command again adds files and never overwrites an earlier run's.
"""
import json
from typing import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import WriteToParquet
from apache_beam.io.textio import WriteToText

from transforms.records import PREDICTION_SCHEMA, bigquery_schema, to_json_row

OUTPUT_FORMATS = ("parquet", "jsonl", "both", "bigquery")


def json_line(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False, separators=(",", ":"))


def prediction_json_line(record: dict) -> str:
    return json_line(to_json_row(record))


class WriteResults(beam.PTransform):
    """Prediction records -> Parquet (explicit Arrow schema) and/or JSONL shards."""

    def __init__(self, run_prefix: str, output_format: str):
        super().__init__()
        if output_format not in ("parquet", "jsonl", "both"):
            raise ValueError(f"WriteResults writes parquet, jsonl or both, not {output_format}")
        self._run_prefix = run_prefix
        self._format = output_format

    def expand(self, records):
        written = []
        if self._format in ("parquet", "both"):
            written.append(records | "WriteParquet" >> WriteToParquet(
                self._run_prefix, schema=PREDICTION_SCHEMA, codec="snappy",
                file_name_suffix=".parquet"))
        if self._format in ("jsonl", "both"):
            written.append(records
                           | "ToJson" >> beam.Map(prediction_json_line)
                           | "WriteJsonl" >> WriteToText(self._run_prefix,
                                                         file_name_suffix=".jsonl"))
        return written


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


def write_text(path: str, text: str):
    """Write a small file through Beam's FileSystems (local or gs://)."""
    with FileSystems.create(path, mime_type="application/json") as f:
        f.write(text.encode("utf-8"))


def write_bigquery_schema(path: str, extra_fields: Sequence[str] = ()):
    write_text(path, json.dumps(bigquery_schema(extra_fields), indent=2) + "\n")
