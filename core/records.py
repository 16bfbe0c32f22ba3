"""The records the pipeline emits, and their declared schemas.

Every output row is a plain dict matching `PREDICTION_SCHEMA` (Arrow, for Parquet) and
`bigquery_schema()`, derived from it (for JSONL loads and WriteToBigQuery); dead letters
are built by `dead_letter()`. Nothing downstream formats strings by hand.
"""
import datetime
import enum
import json
import operator
from typing import Iterable, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa


class Stage(str, enum.Enum):
    """Where a record failed: its dead letter's `stage`, counted as `failed_<stage>`."""
    READ = "read"
    DECODE = "decode"
    ENCODE = "encode"
    PREDICT = "predict"
    PARSE = "parse"

    @property
    def counter(self) -> str:
        return f"failed_{self.value}"


class SkipReason(str, enum.Enum):
    """Why an input was not predicted and is no failure either, counted as `skipped_<reason>`."""
    HIDDEN = "hidden"  # a dot file, or in a dot folder, under the listed root
    NOT_IMAGE = "not_image"  # no image file extension
    SYMLINK = "symlink"
    NOT_REGULAR_FILE = "not_regular_file"  # a FIFO, socket or device
    DUPLICATE_KEY = "duplicate_key"  # another record of its key is predicted
    OVER_LIMIT = "over_limit"  # not among the first --limit keys
    NOT_DEAD_LETTER = "not_dead_letter"  # --retry_dead_letters: not an earlier dead letter
    EXISTING = "existing"  # --skip_existing: already in an earlier run's outputs

    @property
    def counter(self) -> str:
        return f"skipped_{self.value}"


def accounting(counts) -> dict:
    """The run's outcome from its counters (a name -> count mapping): `failed` and `skipped`
    with their breakdowns by Stage and SkipReason, the only names they are counted under."""
    failed_by_stage = {s.value: counts[s.counter] for s in Stage if counts.get(s.counter)}
    skipped_by_reason = {r.value: counts[r.counter] for r in SkipReason
                         if counts.get(r.counter)}
    return {"failed": sum(failed_by_stage.values()),
            "skipped": sum(skipped_by_reason.values()),
            "failed_by_stage": failed_by_stage,
            "skipped_by_reason": skipped_by_reason}

LABEL_TYPE = pa.struct([("label", pa.string()), ("score", pa.float64())])
# Object detection only (Vertex `bboxes`): one box per detection, score descending;
# null for classification. Coordinates as the endpoint gives them (Vertex: 0..1 fractions).
BOX_TYPE = pa.struct([("label", pa.string()), ("score", pa.float64()),
                      ("x_min", pa.float64()), ("x_max", pa.float64()),
                      ("y_min", pa.float64()), ("y_max", pa.float64())])

EMBEDDING = "embedding"
EMBEDDING_TYPE = pa.list_(pa.float32())

PREDICTION_SCHEMA = pa.schema([
        pa.field("key", pa.string(), nullable=False),
        pa.field("labels", pa.list_(LABEL_TYPE)),
        pa.field("top_label", pa.string()),
        pa.field("top_score", pa.float64()),
        pa.field("model", pa.string()),
        pa.field("predicted_at", pa.timestamp("us", tz="UTC")),
        pa.field("boxes", pa.list_(BOX_TYPE)),
        # The model's own prediction for the instance as compact JSON text; null with
        # --no_prediction_column (the column stays, so every run has one schema).
        pa.field("prediction", pa.string()),
        # The image's vector when the model returns one (null otherwise): float32, one length
        # a run. A record holds it as a numpy array, which Arrow converts as a whole.
        pa.field(EMBEDDING, EMBEDDING_TYPE),
])


def prediction_schema(extra_fields: Sequence[str] = ()) -> pa.Schema:
    """PREDICTION_SCHEMA plus one nullable string column per `--passthrough_fields` name."""
    schema = PREDICTION_SCHEMA
    for name in extra_fields:
        schema = schema.append(pa.field(name, pa.string()))
    return schema


BIGQUERY_TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


class ImageRef(NamedTuple):
    """A pointer to one input image: what travels through the graph before the bytes are read."""
    key: str
    uri: Optional[str]  # where to read the bytes from; None when they are inline
    inline_b64: Optional[str] = None  # base64 bytes carried by a CSV/JSONL row
    size: Optional[int] = None
    # A row's other columns (str or None); after SelectTodo only the --passthrough_fields
    # values ({name: value}; None when no field is passed through).
    fields: Optional[dict] = None
    origin: Optional[str] = None  # where a row came from (`rows.csv:12`), for error messages


class Instance(NamedTuple):
    """One encoded instance: its key and its serialized JSON, ready to be joined into a body;
    `fields` the --passthrough_fields values that go into its prediction record."""
    key: str
    body: bytes
    fields: Optional[dict] = None


class PredictRequest(NamedTuple):
    """A packed request: the keys and serialized instances it carries, in order; `fields`
    their --passthrough_fields values (None when no field is passed through)."""
    keys: Tuple[str, ...]
    instances: Tuple[bytes, ...]
    fields: Optional[Tuple[Optional[dict], ...]] = None


_SCORE = operator.itemgetter(1)


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def prediction_record(
        key: str,
        labels: Iterable[Tuple[str, float]],
        model: str,
        predicted_at: datetime.datetime,
        boxes: Optional[Sequence[dict]] = None,
        prediction: Optional[str] = None,
        embedding: Optional[np.ndarray] = None) -> dict:
    """A prediction row: labels sorted by score descending, top label and score alongside
    (None when there are no labels: an embedding-only answer); `boxes` (detection only,
    else None) as BOX_TYPE dicts; `prediction` the model's own answer as JSON text (None
    when left out); `embedding` a float32 vector (None when the model gave none)."""
    ranked = sorted([(str(l), float(s)) for l, s in labels], key=_SCORE, reverse=True)
    top_label, top_score = ranked[0] if ranked else (None, None)
    return {
            "key": key,
            "labels": [{"label": l, "score": s} for l, s in ranked],
            "top_label": top_label,
            "top_score": top_score,
            "model": model,
            "predicted_at": predicted_at,
            "boxes": None if boxes is None else list(boxes),
            "prediction": prediction,
            EMBEDDING: embedding,
    }


def is_unicode(text: str) -> bool:
    """Can `text` be written as UTF-8? Not with a lone surrogate (JSON's `"\\ud800"` is one:
    valid JSON, but no character). ASCII text, the common case, is answered without
    encoding it."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def writable(text: str) -> str:
    """`text`, with any lone surrogate as its escape (`\\ud800`): fit for any output."""
    if is_unicode(text):
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def dead_letter(
        key: str,
        stage: Stage,
        error: str,
        http_status: Optional[int] = None,
        attempts: int = 0,
        failed_at: Optional[datetime.datetime] = None) -> dict:
    """A dead-letter row for one record that could not be predicted."""
    return {
            "key": key,
            "stage": Stage(stage).value,
            "error": writable(error),
            "http_status": http_status,
            "attempts": attempts,
            "failed_at": format_timestamp(failed_at or utc_now()),
    }


def format_timestamp(ts: datetime.datetime) -> str:
    """UTC timestamp in the form BigQuery loads from JSON: `YYYY-MM-DD hh:mm:ss.ffffff`."""
    return ts.astimezone(datetime.timezone.utc).strftime(BIGQUERY_TIMESTAMP_FORMAT)


def to_json_row(record: dict) -> dict:
    """A prediction record as a BigQuery-loadable JSON object (timestamps as strings)."""
    row = dict(record)
    row["predicted_at"] = format_timestamp(record["predicted_at"])
    if row.get("boxes") is None:
        row.pop("boxes", None)  # classification: no boxes key (BigQuery: an empty REPEATED)
    if row.get("prediction") is None:
        row.pop("prediction", None)  # --no_prediction_column: left out of the line
    if row.get(EMBEDDING) is None:
        row.pop(EMBEDDING, None)  # no vector: no key (BigQuery: an empty REPEATED)
    else:
        row[EMBEDDING] = vector(row[EMBEDDING]).tolist()
    return row


def vector(values) -> np.ndarray:
    """An embedding as a flat float32 array (a record's own array, or a list read back)."""
    return np.asarray(values, dtype=np.float32).reshape(-1)


def embedding_json(values) -> str:
    """A vector as a JSON list of numbers, each with the 9 significant digits that give its
    float32 back (the values are finite: checked when the answer was read)."""
    array = vector(values)
    return "[" + ",".join(["%.9g"] * array.size) % tuple(array.tolist()) + "]"


def prediction_json(record: dict) -> str:
    """A prediction record as one compact BigQuery-loadable JSON line (no newline); the
    vector written from its float32 values."""
    values = record.get(EMBEDDING)
    row = to_json_row({**record, EMBEDDING: None})
    text = json.dumps(row, ensure_ascii=False, separators=(",", ":"))
    if values is None:
        return text
    return f'{text[:-1]},"{EMBEDDING}":{embedding_json(values)}}}'



_BIGQUERY_TYPES = {pa.string(): "STRING", pa.float64(): "FLOAT", pa.float32(): "FLOAT64",
                   pa.int64(): "INTEGER", pa.bool_(): "BOOLEAN"}


def bigquery_field(field: pa.Field) -> dict:
    """An Arrow field as a BigQuery schema field: a list is REPEATED, a struct a RECORD."""
    kind = field.type
    mode = "NULLABLE" if field.nullable else "REQUIRED"
    if pa.types.is_list(kind):
        kind, mode = kind.value_type, "REPEATED"
    if pa.types.is_struct(kind):
        return {"name": field.name, "type": "RECORD", "mode": mode,
                "fields": [bigquery_field(kind.field(i)) for i in range(kind.num_fields)]}
    bq_type = "TIMESTAMP" if pa.types.is_timestamp(kind) else _BIGQUERY_TYPES[kind]
    return {"name": field.name, "type": bq_type, "mode": mode}


def bigquery_schema(extra_fields: Sequence[str] = ()) -> list:
    """The BigQuery schema of prediction rows as a JSON-able list (the `bq load` schema file),
    derived from the Arrow schema."""
    return [bigquery_field(f) for f in prediction_schema(extra_fields)]
