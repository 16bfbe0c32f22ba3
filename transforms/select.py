"""SelectTodo: the job's one keyed step. Every record meets the others of its key once, to
pick which record of a key is predicted and whether it needs predicting at all.

Into one CombinePerKey go, keyed by record key:
- the image entries `ReadImages` matched (an entry two patterns match comes twice: one record);
- the row refs `ReadRows` parsed, trimmed first to what the rest of the job needs (the key,
  the image URI or inline bytes, the `--passthrough_fields` values);
- with `--skip_existing`, the keys earlier runs wrote (`ReadExistingKeys`); with
  `--retry_dead_letters`, the keys of earlier dead letters (`ReadDeadLetterKeys`).

The combine keeps, per key, a `KeyRecords`: the best-ranked row (`read.ref_rank`), the image
entry, how many rows there were and whether the key is done or a dead letter: a few values per
key, combined on each worker before the shuffle. Then `_ChooseFn` counts the image entry as an
input, keeps one record (the others are skipped as `duplicate_key`), and skips it if its key is
not among the first `--limit` keys (`over_limit`), not a dead letter (`not_dead_letter`) or
already written (`existing`), in that order. Every skip is counted, so `inputs == predicted +
failed + skipped` holds. On Dataflow this shuffle is also what spreads the records over the
workers before they are encoded and sent (docs/design.md).
"""
import dataclasses
import enum
from typing import Any, Iterable, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam

from core.records import ImageRef, SkipReason, Stage
from transforms import metrics
from transforms.backfill import ReadDeadLetterKeys, ReadExistingKeys
from transforms.failures import FAILED, failure, skip
from transforms.limit import LastKey
from transforms.listing import MatchedEntry
from transforms.passthrough import kept_fields
from transforms.read import image_ref, ref_rank

IMAGE_RANK = (True, "", 0)  # an image entry ranks as a ref without fields or origin (ref_rank)


class Row(NamedTuple):
    """A row's record as it meets the others of its key: its rank (`read.ref_rank`) and its
    ref, trimmed to the passed-through values."""
    rank: tuple
    ref: ImageRef


class Mark(enum.Enum):
    """What an earlier run says of a key."""
    DONE = "done"  # in earlier outputs (--skip_existing)
    RETRY = "retry"  # in earlier dead letters (--retry_dead_letters)


def keyed_row(ref: ImageRef, names: Sequence[str]) -> Tuple[str, Any]:
    return ref.key, Row(ref_rank(ref), ref._replace(fields=kept_fields(ref.fields, names)))


def keyed_mark(key: str, mark: Mark) -> Tuple[str, Any]:
    return key, mark


def record_key(element) -> Iterable[str]:
    """The key of a value that is a record to predict: a row, or a readable image entry."""
    key, value = element
    if isinstance(value, Row) or (isinstance(value, tuple) and MatchedEntry(*value).readable):
        yield key


def better_entry(entry: Optional[MatchedEntry],
                 other: Optional[MatchedEntry]) -> Optional[MatchedEntry]:
    """Of two image entries of one key (two patterns matched the file, from different roots),
    the one to read if either is, else the first reason by name: the same whatever the
    order."""
    if entry is None or other is None:
        return entry or other
    return min(entry, other, key=lambda e: (not e.readable, e.reason or "", e.error or ""))


def better_row(row: Optional[Row], other: Optional[Row]) -> Optional[Row]:
    """Of two rows of one key, the better-ranked (`read.ref_rank`); the first on a tie."""
    if row is None or (other is not None and other.rank < row.rank):
        return other
    return row


@dataclasses.dataclass
class KeyRecords:
    """What one key's values come to: its image entry, its best row, how many rows it has,
    and what earlier runs say of it."""
    entry: Optional[MatchedEntry] = None
    best: Optional[Row] = None
    rows: int = 0
    done: bool = False
    retry: bool = False

    def add(self, value) -> "KeyRecords":
        """Count in one value: a Row, a Mark, or an image entry (a MatchedEntry's fields)."""
        if isinstance(value, Row):
            self.best = better_row(self.best, value)
            self.rows += 1
        elif value is Mark.DONE:
            self.done = True
        elif value is Mark.RETRY:
            self.retry = True
        else:
            self.entry = better_entry(self.entry, MatchedEntry(*value))
        return self

    def merge(self, other: "KeyRecords") -> "KeyRecords":
        self.entry = better_entry(self.entry, other.entry)
        self.best = better_row(self.best, other.best)
        self.rows += other.rows
        self.done = self.done or other.done
        self.retry = self.retry or other.retry
        return self


def key_state(records: KeyRecords) -> list:
    """KeyRecords as the accumulator that crosses the shuffle: a plain list of plain tuples.
    Pickled, the dataclass of named tuples took 147 bytes a key against 17, and 5 % more
    peak memory at 50,000 images (benchmarks/README.md: named types across the shuffle)."""
    best = records.best
    return [None if records.entry is None else tuple(records.entry),
            None if best is None else (best.rank, tuple(best.ref)),
            records.rows, records.done, records.retry]


def key_records(state: list) -> KeyRecords:
    entry, best, rows, done, retry = state
    return KeyRecords(None if entry is None else MatchedEntry(*entry),
                      None if best is None else Row(best[0], ImageRef(*best[1])),
                      rows, done, retry)


class _GatherKey(beam.CombineFn):
    """All values of a key -> its KeyRecords (combined on each worker before the shuffle)."""

    def create_accumulator(self):
        return key_state(KeyRecords())

    def add_input(self, state, value):
        return key_state(key_records(state).add(value))

    def merge_accumulators(self, accumulators):
        merged = KeyRecords()
        for state in accumulators:
            merged.merge(key_records(state))
        return key_state(merged)

    def extract_output(self, state):
        return key_records(state)


def record_to_predict(image: Optional[ImageRef], best: Optional[Row]) -> ImageRef:
    """The record a key keeps: the best-ranked of its image entry and its best row."""
    if best is not None and (image is None or best.rank < IMAGE_RANK):
        return best.ref
    return image


class _ChooseFn(beam.DoFn):
    """(key, KeyRecords) -> the one record of a key to predict; every other outcome counted."""

    def __init__(self, names: Sequence[str], retry_only: bool, limited: bool):
        self._names = tuple(names)
        self._retry_only = retry_only
        self._limited = limited

    def start_bundle(self):
        self._counts = metrics.BundleCounts()

    def finish_bundle(self):
        self._counts.flush()

    def process(self, element, last_key: Optional[str] = None):
        key, found = element
        image = None
        listed = found.entry
        if listed is not None:
            self._counts.inc("inputs")
            if listed.readable:
                image = image_ref(key, listed, kept_fields(None, self._names))
            elif listed.reason is None:
                yield failure(key, Stage.READ, listed.error, self._counts)
            else:
                skip(listed.reason, self._counts)
        records = found.rows + (image is not None)
        if not records:
            return
        for _ in range(records - 1):
            skip(SkipReason.DUPLICATE_KEY, self._counts)
        reason = self._reason(key, last_key, found)
        if reason:
            skip(reason, self._counts)
        else:
            yield record_to_predict(image, found.best)

    def _reason(self, key, last_key, found: KeyRecords) -> Optional[SkipReason]:
        if self._limited and (last_key is None or key > last_key):
            return SkipReason.OVER_LIMIT
        if self._retry_only and not found.retry:
            return SkipReason.NOT_DEAD_LETTER
        return SkipReason.EXISTING if found.done else None


class SelectTodo(beam.PTransform):
    """ReadInputs' Outputs -> one ImageRef per key still to predict (main), trimmed to the
    `passthrough` values, and `failed` (image folders that could not be listed).

    `limit`: only the first N keys. `existing_output`: an output prefix (may hold
    `{date}`/`{run_id}`) whose keys, from any run, are skipped. `dead_letters`: a dead-letter
    prefix; only its keys are predicted.
    """

    def __init__(self, passthrough: Sequence[str] = (), limit: Optional[int] = None,
                 existing_output: Optional[str] = None, dead_letters: Optional[str] = None):
        super().__init__()
        self._names = tuple(passthrough)
        self._limit = limit
        self._existing_output = existing_output
        self._dead_letters = dead_letters

    def expand(self, inputs):
        p = inputs.images.pipeline
        values = [inputs.images,
                  inputs.rows | "KeyRows" >> beam.Map(keyed_row, self._names)]
        if self._existing_output:
            values.append(p
                          | "ReadExistingKeys" >> ReadExistingKeys(self._existing_output)
                          | "MarkDone" >> beam.Map(keyed_mark, Mark.DONE))
        if self._dead_letters:
            values.append(p
                          | "ReadDeadLetterKeys" >> ReadDeadLetterKeys(self._dead_letters)
                          | "MarkRetry" >> beam.Map(keyed_mark, Mark.RETRY))
        values = values | "AllValues" >> beam.Flatten()
        side = {}
        if self._limit:
            side["last_key"] = beam.pvalue.AsSingleton(
                values
                | "RecordKeys" >> beam.FlatMap(record_key)
                | "LastKey" >> LastKey(self._limit))
        choose = _ChooseFn(self._names, bool(self._dead_letters), bool(self._limit))
        return (values
                | "OnePerKey" >> beam.CombinePerKey(_GatherKey())
                | "Choose" >> beam.ParDo(choose, **side).with_outputs(FAILED, main="refs"))
