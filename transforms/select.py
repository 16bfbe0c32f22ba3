"""SelectTodo: the job's one keyed step. Every record meets the others of its key once, to
pick which record of a key is predicted and whether it needs predicting at all.

Into one CombinePerKey go, keyed by record key:
- the image entries `ReadImages` matched (an entry two patterns match comes twice: one record);
- the row refs `ReadRows` parsed, trimmed first to what the rest of the job needs (the key,
  the image URI or inline bytes, the `--passthrough_fields` values);
- with `--skip_existing`, the keys earlier runs wrote (`ReadExistingKeys`); with
  `--retry_dead_letters`, the keys of earlier dead letters (`ReadDeadLetterKeys`).

The combine keeps, per key, the best-ranked row (`read.ref_rank`), the image entry, how many
rows there were and whether the key is done or a dead letter: a few values per key, combined
on each worker before the shuffle. Then `_ChooseFn` counts the image entry as an input, keeps
one record (the others are skipped as `duplicate_key`), and skips it if its key is not among
the first `--limit` keys (`over_limit`), not a dead letter (`not_dead_letter`) or already
written (`existing`), in that order. Every skip is counted, so
`inputs == predicted + failed + skipped` holds. On Dataflow this shuffle is also what spreads
the records over the workers before they are encoded and sent (docs/design.md).
"""
from typing import Iterable, Optional, Sequence, Tuple

import apache_beam as beam

from transforms import metrics
from transforms.backfill import ReadDeadLetterKeys, ReadExistingKeys
from transforms.limit import LastKey
from transforms.passthrough import chosen
from transforms.read import (FAILED, IMAGE, ROW, UNREADABLE_FOLDER, Listed,
                             image_ref, ref_rank)
from core.records import ImageRef, dead_letter

DONE, RETRY = 2, 3  # markers: the key is in earlier outputs / in earlier dead letters
IMAGE_RANK = (True, "", 0)  # an image entry ranks as a ref without fields or origin (ref_rank)

SKIPPED_DUPLICATE = "skipped_duplicate_key"
SKIPPED_OVER_LIMIT = "skipped_over_limit"
SKIPPED_NOT_DEAD_LETTER = "skipped_not_dead_letter"
SKIPPED_EXISTING = "skipped_existing"


def row_value(ref: ImageRef, names: Sequence[str]) -> Tuple[str, tuple]:
    """(key, (ROW, rank, ref as a plain tuple)), the ref trimmed to the passed-through values."""
    rank = ref_rank(ref)
    return ref.key, (ROW, rank, tuple(ref._replace(fields=chosen(ref.fields, names))))


def marker(key: str, kind: int) -> Tuple[str, tuple]:
    return key, (kind,)


def record_key(element: Tuple[str, tuple]) -> Iterable[str]:
    """The key of a value that is a record to predict: a row, or an image entry whose Listed
    (size, reason, raw, error) gives no reason to skip or fail it."""
    key, value = element
    if value[0] == ROW or (value[0] == IMAGE and value[1][1] is None):
        yield key


def better_entry(entry: Optional[tuple], other: Optional[tuple]) -> Optional[tuple]:
    """Of two image entries of one key (two patterns matched the file, from different roots),
    the one to read if either is, else the first reason by name: the same whatever the
    order."""
    if entry is None or other is None:
        return entry or other
    return min(entry, other, key=lambda e: (e[1] is not None, e[1] or ""))


def better_row(row: Optional[tuple], other: Optional[tuple]) -> Optional[tuple]:
    """Of two (rank, row) of one key, the better-ranked (`read.ref_rank`); the first on a tie."""
    if row is None or (other is not None and other[0] < row[0]):
        return other
    return row


class _Key(beam.CombineFn):
    """Per key: [image entry, best (rank, row), rows, done, retry]."""

    def create_accumulator(self):
        return [None, None, 0, False, False]

    def add_input(self, acc, value):
        kind = value[0]
        if kind == IMAGE:
            acc[0] = better_entry(acc[0], value[1])
        elif kind == ROW:
            acc[1] = better_row(acc[1], value[1:])
            acc[2] += 1
        elif kind == DONE:
            acc[3] = True
        else:
            acc[4] = True
        return acc

    def merge_accumulators(self, accumulators):
        merged = self.create_accumulator()
        for image, best, rows, done, retry in accumulators:
            merged[0] = better_entry(merged[0], image)
            merged[1] = better_row(merged[1], best)
            merged[2] += rows
            merged[3] = merged[3] or done
            merged[4] = merged[4] or retry
        return merged

    def extract_output(self, acc):
        return tuple(acc)


def pick(key: str, image: Optional[ImageRef], best: Optional[tuple]) -> ImageRef:
    """The record a key keeps: the best-ranked of its image entry and its best row."""
    if best is not None and (image is None or best[0] < IMAGE_RANK):
        return ImageRef(*best[1])
    return image


class _ChooseFn(beam.DoFn):
    """(key, combined) -> the one record of a key to predict; every other outcome counted."""

    def __init__(self, names: Sequence[str], retry_only: bool, limited: bool):
        self._names = tuple(names)
        self._retry_only = retry_only
        self._limited = limited

    def start_bundle(self):
        self._counts = metrics.BundleCounts()

    def finish_bundle(self):
        self._counts.flush()

    def process(self, element, last_key: Optional[str] = None):
        key, (entry, best, rows, done, retry) = element
        image = None
        if entry is not None:
            listed = Listed(*entry)
            self._counts.inc("inputs")
            if listed.reason is None:
                image = image_ref(key, listed, chosen(None, self._names))
            elif listed.reason == UNREADABLE_FOLDER:
                self._counts.inc("failed_read")
                yield beam.pvalue.TaggedOutput(FAILED, dead_letter(key, "read", listed.error))
            else:
                self._skip(listed.reason)
        records = rows + (image is not None)
        if not records:
            return
        for _ in range(records - 1):
            self._skip(SKIPPED_DUPLICATE)
        reason = self._reason(key, last_key, done, retry)
        if reason:
            self._skip(reason)
        else:
            yield pick(key, image, best)

    def _reason(self, key, last_key, done, retry) -> Optional[str]:
        if self._limited and (last_key is None or key > last_key):
            return SKIPPED_OVER_LIMIT
        if self._retry_only and not retry:
            return SKIPPED_NOT_DEAD_LETTER
        return SKIPPED_EXISTING if done else None

    def _skip(self, reason: str):
        self._counts.inc(reason)
        self._counts.inc("skipped")


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
                  inputs.rows | "KeyRows" >> beam.Map(row_value, self._names)]
        if self._existing_output:
            values.append(p
                          | "ReadExistingKeys" >> ReadExistingKeys(self._existing_output)
                          | "MarkDone" >> beam.Map(marker, DONE))
        if self._dead_letters:
            values.append(p
                          | "ReadDeadLetterKeys" >> ReadDeadLetterKeys(self._dead_letters)
                          | "MarkRetry" >> beam.Map(marker, RETRY))
        values = values | "AllValues" >> beam.Flatten()
        side = {}
        if self._limit:
            side["last_key"] = beam.pvalue.AsSingleton(
                values
                | "RecordKeys" >> beam.FlatMap(record_key)
                | "LastKey" >> LastKey(self._limit))
        choose = _ChooseFn(self._names, bool(self._dead_letters), bool(self._limit))
        return (values
                | "OnePerKey" >> beam.CombinePerKey(_Key())
                | "Choose" >> beam.ParDo(choose, **side).with_outputs(FAILED, main="refs"))
