"""The files a run leaves, as the run report reads them.

A finished run has `<prefix>-summary.json`, `<prefix>-metrics.json`, its prediction shards
`<prefix>-*.parquet` (or `.jsonl`) and its dead letters under the summary's `errors` prefix.
A run that was killed (kill -9, a lost machine) has no summary, but the parts it committed
(`<prefix>.parts/part-*.parquet.part`, and `<errors>-<run id>.parts/` for its dead letters)
hold its predictions: `find_run` then returns those, marked incomplete.
"""
import datetime
import io
import json
import re
from typing import Iterable, List, NamedTuple, Optional

import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from core.paths import (DEAD_LETTER_PART_EXTENSION, parts_dir, PREDICTION_PART_EXTENSION,
                        RUN_ID_PATTERN)
from transforms.commit import matching

#: The prediction columns the report reads (an `embedding` column is read where present).
REPORT_COLUMNS = ("key", "top_label", "top_score", "predicted_at")
EMBEDDING_COLUMN = "embedding"
JSONL_BATCH_ROWS = 4096


class ReportError(ValueError):
    """The run's files cannot make a report (one line for the user)."""


class RunFiles(NamedTuple):
    """What a report is made from. `summary` is the run's own, or for an incomplete run the
    little its prefix tells (`run_id`, `output`, `errors`, `incomplete: true`)."""
    prefix: str
    summary: dict
    complete: bool
    predictions: List[str]  # Parquet shards or parts, else JSONL shards
    dead_letters: List[str]  # JSON-line shards and parts


def read_text(path: str) -> str:
    with FileSystems.open(path) as f:
        return f.read().decode("utf-8")


def read_summary(prefix: str) -> Optional[dict]:
    if not matching(prefix, "-summary.json"):
        return None
    try:
        return json.loads(read_text(f"{prefix}-summary.json"))
    except Exception as e:  # Beam's filesystems raise several types
        raise ReportError(f"unreadable run summary at {prefix}-summary.json "
                          f"({type(e).__name__})")


def read_metrics(prefix: str) -> dict:
    """The run's counters and distributions, or {} for a run that did not write them."""
    if not matching(prefix, "-metrics.json"):
        return {}
    return json.loads(read_text(f"{prefix}-metrics.json"))


def default_errors_prefix(prefix: str) -> Optional[str]:
    """`<output>-errors-<run id>` for `<output>-<run id>`: where a run with the default
    `--errors` put its dead letters (None when `prefix` does not end in a run id)."""
    found = re.match(r"^(.*)-(" + RUN_ID_PATTERN + ")$", prefix)
    return f"{found.group(1)}-errors-{found.group(2)}" if found else None


def run_id_of(prefix: str) -> str:
    found = re.search(RUN_ID_PATTERN + "$", prefix)
    return found.group(0) if found else ""


def prediction_shards(prefix: str) -> List[str]:
    return matching(prefix, "-*.parquet") or matching(prefix, "-*.jsonl")


def find_run(prefix: str) -> RunFiles:
    """The run's files at `prefix` (`<output>-<run id>`, or its `.parts` folder)."""
    prefix = prefix.rstrip("/")
    if prefix.endswith(".parts"):
        prefix = prefix[:-len(".parts")]
    summary = read_summary(prefix)
    if summary is not None:
        errors = summary.get("errors")
        dead = matching(errors, "-*.jsonl") if errors else []
        return RunFiles(prefix, summary, True, prediction_shards(prefix), dead)
    parts = matching(parts_dir(prefix), f"/part-*.{PREDICTION_PART_EXTENSION}")
    shards = prediction_shards(prefix)
    if not parts and not shards:
        raise ReportError(f"no run summary at {prefix}-summary.json and no committed "
                          f"predictions in {parts_dir(prefix)}/")
    errors = default_errors_prefix(prefix)
    dead = []
    if errors:
        dead = matching(errors, "-*.jsonl") + matching(
            parts_dir(errors), f"/part-*.{DEAD_LETTER_PART_EXTENSION}")
    summary = {"run_id": run_id_of(prefix), "output": prefix, "errors": errors,
               "incomplete": True}
    return RunFiles(prefix, summary, False, shards or parts, dead)


def parquet_batches(path: str, with_embedding: bool = True) -> Iterable[pa.RecordBatch]:
    """The report's columns of one Parquet shard or part, a record batch at a time."""
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
    with FileSystems.open(path) as f:
        data = pq.ParquetFile(io.BytesIO(f.read()))
    names = set(data.schema_arrow.names)
    columns = [c for c in REPORT_COLUMNS if c in names]
    if with_embedding and EMBEDDING_COLUMN in names:
        columns.append(EMBEDDING_COLUMN)
    yield from data.iter_batches(columns=columns)


def jsonl_batches(path: str, with_embedding: bool = True) -> Iterable[pa.RecordBatch]:
    """The report's columns of one JSONL shard as record batches (times parsed)."""
    names = REPORT_COLUMNS + ((EMBEDDING_COLUMN,) if with_embedding else ())
    rows = []
    for line in read_text(path).splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        row["predicted_at"] = parse_time(row.get("predicted_at"))
        rows.append({name: row.get(name) for name in names})
        if len(rows) == JSONL_BATCH_ROWS:
            yield pa.RecordBatch.from_pylist(rows)
            rows = []
    if rows:
        yield pa.RecordBatch.from_pylist(rows)


def prediction_batches(paths: Iterable[str], with_embedding: bool = True
                       ) -> Iterable[pa.RecordBatch]:
    for path in paths:
        if path.endswith(".jsonl"):
            yield from jsonl_batches(path, with_embedding)
        else:
            yield from parquet_batches(path, with_embedding)


def prediction_rows(prefix: str) -> Iterable[dict]:
    """key, top_label, top_score and predicted_at of every prediction of the run at
    `prefix` (its shards, or what a killed run committed)."""
    for batch in prediction_batches(find_run(prefix).predictions, with_embedding=False):
        yield from batch.to_pylist()


def dead_letter_rows(paths: Iterable[str]) -> Iterable[dict]:
    for path in paths:
        for line in read_text(path).splitlines():
            if line.strip():
                yield json.loads(line)


def parse_time(text) -> Optional[datetime.datetime]:
    """A BigQuery-style `YYYY-MM-DD hh:mm:ss[.ffffff]` UTC timestamp (or an ISO one)."""
    if not text:
        return None
    if isinstance(text, datetime.datetime):
        return text
    try:
        stamp = datetime.datetime.fromisoformat(str(text).replace(" ", "T").replace("Z", ""))
    except ValueError:
        return None
    return stamp.replace(tzinfo=stamp.tzinfo or datetime.timezone.utc)
