"""What the launcher writes beside a job's shards: small text files (the BigQuery schema of
the JSONL), and the `bq load` command it prints after the summary."""
import json
import shlex
import uuid
from typing import Optional, Sequence, Tuple

from apache_beam.io.filesystems import FileSystems

from core.records import bigquery_schema, prediction_schema
from transforms.commit import matching
from transforms.write import parse_passthrough_fields


def write_text(path: str, text: str):
    """Write a small file through Beam's FileSystems (local or gs://), atomically: into a
    temp name next to it, then renamed, so a killed run never leaves half a file."""
    temp = f"{path}.tmp-{uuid.uuid4().hex}"
    with FileSystems.create(temp, mime_type="application/json") as f:
        f.write(text.encode("utf-8"))
    FileSystems.rename([temp], [path])  # replaces an existing file (os.rename, GCS rewrite)


def write_bigquery_schema(path: str, extra_fields: Sequence[str] = ()):
    """The schema of the rows every run under this prefix writes: the prediction fields and
    the --passthrough_fields of this run and of the runs before it (the file's own), all
    nullable, so each run's JSONL loads with it."""
    earlier = schema_passthrough_fields(path)
    fields = earlier + tuple(name for name in extra_fields if name not in earlier)
    write_text(path, json.dumps(bigquery_schema(fields), indent=2) + "\n")


def schema_passthrough_fields(path: str) -> Tuple[str, ...]:
    """The --passthrough_fields columns of a schema file this pipeline wrote (none when there
    is none, or it cannot be read as one)."""
    try:
        with FileSystems.open(path) as f:
            fields = json.loads(f.read())
        names = [field["name"] for field in fields
                 if field["name"] not in prediction_schema().names]
        return parse_passthrough_fields(",".join(names))
    except Exception:  # no file (Beam raises several types), or not a schema of ours
        return ()


def bq_load_command(run_prefix: str, schema_path: str, table: Optional[str] = None,
                    shards: Sequence[str] = ()) -> str:
    """The `bq load` command that appends this run's JSONL shards to a BigQuery table.

    `bq load` takes a wildcard only for gs:// sources, one file at a time from local disk,
    and the schema from a local file. `shards` are the run's local shard paths.
    """
    table = table or "DATASET.TABLE"
    load = "bq load --source_format=NEWLINE_DELIMITED_JSON " + shlex.quote(table)
    if run_prefix.startswith("gs://"):
        local_schema = "./" + schema_path.rsplit("/", 1)[-1]
        return (f"gcloud storage cp {shlex.quote(schema_path)} {shlex.quote(local_schema)} && "
                f"{load} {shlex.quote(run_prefix + '-*.jsonl')} {shlex.quote(local_schema)}")
    if len(shards) == 1:
        return f"{load} {shlex.quote(shards[0])} {shlex.quote(schema_path)}"
    pattern = shlex.quote(run_prefix) + "-*.jsonl"
    return (f"for f in {pattern}; do {load} \"$f\" {shlex.quote(schema_path)} || break; "
            "done")


def jsonl_load_command(run_prefix: str, schema_path: str, table: Optional[str] = None) -> str:
    """`bq_load_command` for a finished run, listing its local shards."""
    shards = ()
    if not run_prefix.startswith("gs://"):
        shards = matching(run_prefix, "-*.jsonl")
    return bq_load_command(run_prefix, schema_path, table, shards)


def last_error(errors_run_prefix: str, stages: Sequence[str]) -> str:
    """The `error` of one of this run's dead letters at one of `stages` ('' when none)."""
    for path in matching(errors_run_prefix, "-*.jsonl"):
        with FileSystems.open(path) as f:
            for line in f:
                row = json.loads(line)
                if row.get("stage") in stages:
                    return row.get("error") or ""
    return ""
