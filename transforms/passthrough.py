"""`--passthrough_fields a,b`: kept_fields columns of an input row copied into its prediction
record (like Vertex Batch Prediction's includedFields).

`SelectTodo` trims each row to these values before the job's one keyed step (`kept_fields`); they
ride with the record through encode, pack and predict (`Instance.fields`,
`PredictRequest.fields`) and join the prediction record as it is made (`with_values`), so
the records committed in parts while the job runs hold them too. Values are strings (the
output schema declares them STRING); a missing column, or an image input, gives null.
"""
from typing import Optional, Sequence

from transforms.rows import as_text


def kept_fields(fields: Optional[dict], names: Sequence[str]) -> Optional[dict]:
    """{name: value as text or None} for the named columns of a row (`fields` None: an image
    input, all null); None when no column is passed through."""
    if not names:
        return None
    if not fields:
        return {name: None for name in names}
    return {name: as_text(fields.get(name)) for name in names}


def with_values(record: dict, values: Optional[dict]) -> dict:
    """A prediction record with its passed-through values as extra columns."""
    return {**record, **values} if values else record
