"""Incremental commits: finished records are written durably while the job runs.

`CommitParts` sits right after the stage that produces records (fused with it, so it sees
them as they are made) and writes them, a part at a time, into the run's parts folder:

    <output>-<run_id>.parts/part-<writer>-<seq>.parquet.part   (predictions, Parquet)
    <errors>-<run_id>.parts/part-<writer>-<seq>.jsonl.part     (dead letters, JSON lines)

A part is written when `max_records` records are waiting or the oldest waiting record is
`max_seconds` old, and at the end of each bundle. `<writer>` is random per bundle attempt, so
two attempts of one bundle never write the same name. A part appears whole or not at all: a
local part is written under a temporary name and renamed, a `gs://` part is one object upload
(GCS makes an object visible only when its upload completes). The `.part` suffix keeps parts
out of `<output>*.parquet` / `<output>*.jsonl` globs and `bq load` wildcards.

The parts are a journal, not the outputs: a finished run writes its shards from the
PCollection as before and then deletes its parts folders (`DeleteParts`, after the shards are
in place). A killed run leaves its parts; `--skip_existing` reads their keys like shards', and
the next such run adopts them (`transforms.backfill.AdoptParts`). See docs/crash-safety.md.
"""
import io
import json
import time
import uuid
from typing import Iterable, List, Optional

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows

from core.paths import DEAD_LETTER_PART_EXTENSION, part_path, PREDICTION_PART_EXTENSION, quote_glob
from transforms import metrics


DEFAULT_COMMIT_RECORDS = 10_000
DEFAULT_COMMIT_SECONDS = 10.0  # benchmarks/commit_interval.py; docs/crash-safety.md
CHUNK_RECORDS = 1000


def write_bytes_atomically(path: str, data: bytes):
    """`data` at `path`, whole or not at all: temp name + rename on a local disk, a single
    object upload elsewhere (gs://, where an object appears only once fully uploaded)."""
    if FileSystems.get_scheme(path) not in (None, "file"):
        with FileSystems.create(path) as f:
            f.write(data)
        return
    temp = f"{path}.tmp-{uuid.uuid4().hex}"
    with FileSystems.create(temp) as f:  # creates missing local folders
        f.write(data)
    FileSystems.rename([temp], [path])


def parquet_bytes(records: List[dict], schema: pa.Schema) -> bytes:
    """The bytes of one prediction part holding `records`."""
    encoding = _ParquetParts(schema)
    return encoding.join([encoding.chunk(records)])


def jsonl_bytes(rows: List[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n"
                   for r in rows).encode("utf-8")


def read_parquet_part(path: str) -> Iterable[dict]:
    """The rows of one prediction part."""
    with FileSystems.open(path) as f:
        table = pq.read_table(io.BytesIO(f.read()))
    yield from table.to_pylist()


class _CommitPartsFn(beam.DoFn):
    """Buffers records and writes them as parts; outputs each part's path once it is durable.
    The buffer holds records encoded `CHUNK_RECORDS` at a time (far smaller than dicts)."""

    def __init__(self, folder: str, extension: str, encoding, max_records: int,
                 max_seconds: float, clock=time.monotonic):
        self._folder = folder
        self._extension = extension
        self._encoding = encoding
        self._max_records = max_records
        self._max_seconds = max_seconds
        self._clock = clock

    def start_bundle(self):
        self._writer = uuid.uuid4().hex[:16]
        self._seq = 0
        self._reset()

    def _reset(self):
        self._chunks, self._pending, self._count, self._oldest = [], [], 0, None

    def process(self, record):
        if not self._count:
            self._oldest = self._clock()
        self._pending.append(record)
        self._count += 1
        if len(self._pending) >= CHUNK_RECORDS:
            self._chunks.append(self._encoding.chunk(self._pending))
            self._pending = []
        if (self._count >= self._max_records
                or self._clock() - self._oldest >= self._max_seconds):
            yield self._flush()

    def finish_bundle(self):
        if self._count:
            yield GlobalWindows.windowed_value(self._flush())

    def _flush(self) -> str:
        if self._pending:
            self._chunks.append(self._encoding.chunk(self._pending))
        path = part_path(self._folder, self._writer, self._seq, self._extension)
        write_bytes_atomically(path, self._encoding.join(self._chunks))
        metrics.counter("parts_committed").inc()
        metrics.counter("records_committed").inc(self._count)
        self._seq += 1
        self._reset()
        return path


class CommitParts(beam.PTransform):
    """Records -> the paths of the parts that now hold them durably (see module doc).

    `schema`: an Arrow schema for Parquet parts (predictions); None for JSON-line parts.
    """

    def __init__(self, folder: str, schema: Optional[pa.Schema] = None,
                 max_records: int = DEFAULT_COMMIT_RECORDS,
                 max_seconds: float = DEFAULT_COMMIT_SECONDS):
        super().__init__()
        if max_records < 1 or not max_seconds > 0:
            raise ValueError("a part needs max_records >= 1 and max_seconds > 0")
        self._folder = folder
        self._schema = schema
        self._max_records = max_records
        self._max_seconds = max_seconds

    def expand(self, records):
        if self._schema is not None:
            extension, encoding = PREDICTION_PART_EXTENSION, _ParquetParts(self._schema)
        else:
            extension, encoding = DEAD_LETTER_PART_EXTENSION, _JsonLinesParts()
        return records | "Commit" >> beam.ParDo(_CommitPartsFn(
            self._folder, extension, encoding, self._max_records, self._max_seconds))


class _ParquetParts:
    """Picklable encoding of prediction parts: Arrow record batches, one Parquet file."""

    def __init__(self, schema: pa.Schema):
        self._schema = schema

    def chunk(self, records: List[dict]) -> pa.RecordBatch:
        return pa.RecordBatch.from_pylist(records, schema=self._schema)

    def join(self, batches: List[pa.RecordBatch]) -> bytes:
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_batches(batches, schema=self._schema), buffer,
                       compression="snappy", use_compliant_nested_type=True)
        return buffer.getvalue()


class _JsonLinesParts:
    """Picklable encoding of dead-letter parts: JSON lines."""

    def chunk(self, records: List[dict]) -> bytes:
        return jsonl_bytes(records)

    def join(self, chunks: List[bytes]) -> bytes:
        return b"".join(chunks)


# -- removing parts once the shards are in place -------------------------------------------

def matching(prefix: str, rest: str) -> List[str]:
    """The paths, sorted, of the files named `prefix` (itself, glob characters and all)
    followed by what the glob `rest` matches."""
    matched = FileSystems.match([quote_glob(prefix) + rest])[0].metadata_list
    return sorted(m.path for m in matched)


def list_folder(folder: str) -> List[str]:
    """Paths of the files directly in `folder` (none when it does not exist)."""
    return matching(folder, "/*")


def delete_folder(folder: str) -> int:
    """Delete a parts folder and everything in it; returns how many files it held."""
    paths = list_folder(folder)
    if paths:  # Beam's delete takes patterns: each path quoted to match only itself
        FileSystems.delete([quote_glob(path) for path in paths])
    if FileSystems.get_scheme(folder) in (None, "file") and FileSystems.exists(folder):
        FileSystems.delete([quote_glob(folder)])
    return len(paths)


def delete_folders_after(_, folders, done) -> Iterable[int]:
    """Runs once, when `done` (a side input) is complete: deletes `folders`."""
    for folder in folders:
        removed = delete_folder(folder)
        metrics.counter("parts_removed").inc(removed)
        yield removed


class DeleteParts(beam.PTransform):
    """Deletes parts folders once the given PCollections are complete.

    Input: the PCollections that must be finished first — the sinks' outputs (a file sink
    outputs its final shard names only after renaming them into place) and the committed
    part paths, all small (one element per file). They are flattened into one side input of a
    step that runs once (on an `Impulse`), so the wait adds two steps and a side input
    however many PCollections it waits on. Outputs how many files each folder held.
    """

    def __init__(self, folders: Iterable[str]):
        super().__init__()
        self._folders = tuple(folders)

    def expand(self, after):
        done = after | "Done" >> beam.Flatten()
        return (after[0].pipeline
                | "Once" >> beam.Impulse()
                | "Delete" >> beam.FlatMap(delete_folders_after, self._folders,
                                           beam.pvalue.AsIter(done)))
