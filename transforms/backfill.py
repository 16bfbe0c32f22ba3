"""Backfill: the keys earlier runs wrote, and those of their dead letters.

`ReadExistingKeys` (`--skip_existing`) and `ReadDeadLetterKeys` (`--retry_dead_letters`)
read them inside the pipeline; `transforms.select.SelectTodo` groups them with the input
records by key, so no key set is held in memory on the launcher or on a worker.

Which files are trusted: only complete prediction shards,
`<output>-<run_id>-SSSSS-of-NNNNN.parquet|.jsonl` (`transforms.write.shard_regex`). Beam's
file sinks write into `beam-temp-*` folders and rename a finished shard into place at the end
of the job (an atomic rename locally, an atomic object copy on GCS), so a killed run leaves
only temp files, which these patterns never match. Dead letters (`<output>-errors-...`) and
summaries are not prediction shards and are never read as such.
"""
import json
import logging
import re
from typing import Iterable, Iterator, Tuple

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.textio import ReadAllFromText

from core.paths import dead_letter_glob, parts_glob, parts_regex, shard_glob, shard_regex
from transforms import metrics
from transforms.commit import read_parquet_part

UNREADABLE_SHARDS = "unreadable_shards"

_LOG = logging.getLogger("batch_predict")


def is_shard(path: str, pattern: str) -> bool:
    return re.match(pattern, path) is not None


def metadata_path(metadata) -> str:
    return metadata.path


def key_of_json_line(line: str) -> Iterable[str]:
    """The `key` of a JSONL prediction row; nothing (and a counter) for an unreadable line."""
    try:
        row = json.loads(line)
        key = row["key"]
    except (ValueError, KeyError, TypeError):
        if line.strip():
            metrics.counter("existing_unreadable_lines").inc()
        return
    if isinstance(key, str):
        yield key


def key_of_dead_letter(line: str) -> Iterable[str]:
    """The key of a dead-letter row (one that names a `stage`); nothing for anything else."""
    try:
        row = json.loads(line)
    except ValueError:
        return
    if isinstance(row, dict) and isinstance(row.get("key"), str) and "stage" in row:
        yield row["key"]


def key_marker(key: str) -> Tuple[str, None]:
    return key, None


class _ListShards(beam.PTransform):
    """Paths of the complete prediction shards of one extension, from every earlier run."""

    def __init__(self, output_template: str, extension: str):
        super().__init__()
        self._glob = shard_glob(output_template, extension)
        self._regex = shard_regex(output_template, extension)

    def expand(self, pbegin):
        return (pbegin
                | "Match" >> fileio.MatchFiles(
                    self._glob, empty_match_treatment=fileio.EmptyMatchTreatment.ALLOW)
                | "Paths" >> beam.Map(metadata_path)
                | "OnlyShards" >> beam.Filter(is_shard, self._regex))


class _ListParts(beam.PTransform):
    """Paths of the prediction parts every earlier run committed (`transforms.commit`)."""

    def __init__(self, output_template: str):
        super().__init__()
        self._glob = parts_glob(output_template)
        self._regex = parts_regex(output_template)

    def expand(self, pbegin):
        return (pbegin
                | "Match" >> fileio.MatchFiles(
                    self._glob, empty_match_treatment=fileio.EmptyMatchTreatment.ALLOW)
                | "Paths" >> beam.Map(metadata_path)
                | "OnlyParts" >> beam.Filter(is_shard, self._regex))


def parquet_keys(path: str) -> Iterator[str]:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        table = pq.read_table(f, columns=["key"])
    for key in table.column("key").to_pylist():
        if isinstance(key, str):
            yield key


def jsonl_keys(path: str) -> Iterator[str]:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        for raw in f:
            yield from key_of_json_line(raw.decode("utf-8", "replace"))


def shard_keys(path: str, count: bool = True) -> Iterator[str]:
    """The keys of one earlier prediction shard (Parquet or JSONL) or committed part (Parquet).
    One that cannot be read (truncated, corrupt) is skipped: the keys only it holds are
    predicted again, and the job goes on. `count`: it is counted as `unreadable_shards` and
    logged (once per job: the reading that feeds `SelectTodo` counts)."""
    read = jsonl_keys if path.endswith(".jsonl") else parquet_keys
    try:
        keys = list(read(path))
    except Exception as e:  # pyarrow and Beam's filesystems raise many types
        if count:
            metrics.counter(UNREADABLE_SHARDS).inc()
            _LOG.warning("unreadable shard %s skipped (keys only it holds are predicted "
                         "again): %s", path, f"{type(e).__name__}: {e}"[:300])
        return
    yield from keys


class ReadExistingKeys(beam.PTransform):
    """Keys of every prediction already written under an output prefix: Parquet and JSONL
    shards, and (`with_parts`) the parts committed by runs that did not finish. `count`:
    unreadable shards and parts are counted and logged (see `shard_keys`)."""

    def __init__(self, output_template: str, with_parts: bool = True, count: bool = True):
        super().__init__()
        self._template = output_template
        self._with_parts = with_parts
        self._count = count

    def expand(self, pbegin):
        files = [pbegin | "ListParquet" >> _ListShards(self._template, "parquet"),
                 pbegin | "ListJsonl" >> _ListShards(self._template, "jsonl")]
        if self._with_parts:
            files.append(pbegin | "ListParts" >> _ListParts(self._template))
        return (tuple(files)
                | "Shards" >> beam.Flatten()
                | "Spread" >> beam.Reshuffle()
                | "Keys" >> beam.FlatMap(shard_keys, self._count))


class ReadDeadLetterKeys(beam.PTransform):
    """Keys of every dead letter under a prefix (`<prefix>-*.jsonl`, any run)."""

    def __init__(self, prefix: str):
        super().__init__()
        self._glob = dead_letter_glob(prefix)

    def expand(self, pbegin):
        return (pbegin
                | "Match" >> fileio.MatchFiles(
                    self._glob, empty_match_treatment=fileio.EmptyMatchTreatment.ALLOW)
                | "Paths" >> beam.Map(metadata_path)
                | "Read" >> ReadAllFromText(compression_type=CompressionTypes.UNCOMPRESSED)
                | "Keys" >> beam.FlatMap(key_of_dead_letter))


def first_unless_done(joined: Tuple[str, dict]) -> Iterable[dict]:
    """One adopted row of a key, unless a complete shard already holds the key."""
    _, groups = joined
    rows = groups["rows"]
    if rows and not groups["done"]:
        metrics.counter("adopted").inc()
        yield rows[0]


def readable_part_rows(path: str) -> Iterable[dict]:
    """The rows of one committed part; none when it cannot be read (truncated, corrupt): its
    keys are then not skipped either, so they are predicted again (`shard_keys` counts it)."""
    try:
        rows = list(read_parquet_part(path))
    except Exception:  # pyarrow and Beam's filesystems raise many types
        return
    yield from rows


def key_row(row: dict) -> Tuple[str, dict]:
    return row["key"], row


class AdoptParts(beam.PTransform):
    """Rows of killed runs' committed parts, once per key, leaving out keys that complete
    shards already hold: what a `--skip_existing` run writes into its own shards."""

    def __init__(self, part_paths: Iterable[str], output_template: str):
        super().__init__()
        self._paths = tuple(part_paths)
        self._template = output_template

    def expand(self, pbegin):
        rows = (pbegin
                | "Parts" >> beam.Create(self._paths)
                | "Spread" >> beam.Reshuffle()
                | "Read" >> beam.FlatMap(readable_part_rows)
                | "KeyRows" >> beam.Map(key_row))
        in_shards = (pbegin
                     | "KeysInShards" >> ReadExistingKeys(self._template, with_parts=False,
                                                          count=False)
                     | "MarkDone" >> beam.Map(key_marker))
        return ({"rows": rows, "done": in_shards}
                | "JoinByKey" >> beam.CoGroupByKey()
                | "OncePerKey" >> beam.FlatMap(first_unless_done))


def any_match(pattern: str) -> bool:
    """Whether a glob matches at least one file (a launcher-side preflight check)."""
    return bool(FileSystems.match([pattern], limits=[1])[0].metadata_list)
