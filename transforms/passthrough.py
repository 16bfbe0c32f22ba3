"""JoinPassthrough: copies chosen columns of an input row into its prediction record
(`--passthrough_fields a,b`, like Vertex Batch Prediction's includedFields).

The fields are joined back by key after Predict (a CoGroupByKey of small dicts) instead of
riding along through encode, pack and predict: the hot path keeps carrying only keys and
instance bytes, the request-building code stays unaware of them, and the cost (one shuffle
of the prediction rows) is paid only when the flag is given. Values are strings (the output
schema declares them STRING); a missing column, or an image input, gives null.
"""
from typing import Iterable, Sequence, Tuple

import apache_beam as beam

from transforms.read import as_text
from transforms.records import ImageRef


def chosen_fields(ref: ImageRef, names: Sequence[str]) -> Iterable[Tuple[str, dict]]:
    """(key, {name: value}) for a ref read from a row; nothing for a ref without fields."""
    if ref.fields:
        yield ref.key, {name: as_text(ref.fields.get(name)) for name in names}


def key_record(record: dict) -> Tuple[str, dict]:
    return record["key"], record


def with_fields(joined: Tuple[str, dict], names: Sequence[str]) -> Iterable[dict]:
    """The prediction of a key with its row's fields (keys are unique: ReadInputs keeps one
    record per key, so a key has at most one row and one prediction)."""
    _, groups = joined
    values = next(iter(groups["fields"]), {})
    for record in groups["predictions"]:
        yield {**record, **{name: values.get(name) for name in names}}


class JoinPassthrough(beam.PTransform):
    """(predictions, refs) -> predictions with the named row fields as extra columns."""

    def __init__(self, names: Sequence[str]):
        super().__init__()
        self._names = tuple(names)

    def expand(self, pcolls):
        predictions, refs = pcolls
        return ({"predictions": predictions | "KeyPredictions" >> beam.Map(key_record),
                 "fields": refs | "RowFields" >> beam.FlatMap(chosen_fields, self._names)}
                | "JoinByKey" >> beam.CoGroupByKey()
                | "AddFields" >> beam.FlatMap(with_fields, self._names))
