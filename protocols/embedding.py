"""Embeddings: where a prediction's vector is, how it is checked, and its one length a run.

A vector is read as a float32 numpy array (a JSON list converts in C; a binary v2 output
is a view of the response bytes), checked finite and one-dimensional, optionally scaled to
unit L2 norm; it is refused with a `LabelError` (a `parse` dead letter) otherwise. The rest
of the prediction (without the vector) is what its labels are read from, when it has any:
an embedding-only answer is a row without labels.
"""
import math
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from protocols.labels import (LabelError, NAME_KEYS, SCORE_KEYS, snippet, TF_ESTIMATOR_KEYS,
                              value_at)

NORMALIZATIONS = ("none", "l2")
# v2 output names read as the vector without --embedding_field (one such output of shape
# [-1, d] and floating point, when no labels flag names the outputs).
VECTOR_NAMES = ("embedding", "embeddings", "features", "image_embeds", "pooler_output")
FLOAT_DATATYPES = ("FP16", "FP32", "FP64", "BF16")
MULTIMODAL_FIELD = "imageEmbedding"


class EmbeddingSpec(NamedTuple):
    """Where the vector is and what is done with it."""
    field: Optional[str] = None  # a dotted path in a prediction, or a v2 output's name
    normalize: str = "none"  # --normalize_embedding
    keep_prediction: bool = False  # --keep_embedding_prediction: the `prediction` text too
    dimension: Optional[int] = None  # the length the model states (metadata, parameters)


def vector_of(value: Any, spec: EmbeddingSpec) -> np.ndarray:
    """A prediction's vector as float32 values; LabelError when it is none."""
    array = None
    if isinstance(value, np.ndarray):
        array = value
    elif isinstance(value, list):
        try:  # in C: a list of numbers becomes float64 (or int64), anything else does not
            array = np.asarray(value)
        except (ValueError, OverflowError):  # ragged, or an int too large
            array = None
    if array is None:
        raise LabelError(f"embedding {snippet(value)} is not a list of numbers")
    if array.ndim != 1 or array.dtype.kind not in "fiu" or not array.size:
        raise LabelError(f"embedding is not a non-empty list of numbers ({array.dtype.name} "
                         f"{list(array.shape)})")
    with np.errstate(over="ignore", invalid="ignore"):  # too large for float32: inf
        values = array.astype(np.float32)
    if not np.isfinite(values).all():
        bad = int(np.argmin(np.isfinite(values)))
        raise LabelError(f"embedding value {bad} ({array[bad]!r}) is not a finite float32 "
                         f"(NaN and Infinity are never written)")
    if spec.normalize == "l2":
        norm = math.sqrt(float(np.dot(values.astype(np.float64), values.astype(np.float64))))
        if norm > 0:
            values = (values.astype(np.float64) / norm).astype(np.float32)
    return values


def without(value: Any, parts: Sequence[str]) -> Any:
    """A copy of `value` without what the path `parts` leads to (dicts along it copied)."""
    head, tail = parts[0], parts[1:]
    if isinstance(value, dict):
        if not tail:
            return {k: v for k, v in value.items() if k != head}
        return {**value, head: without(value[head], tail)}
    if isinstance(value, list) and tail:
        copy = list(value)
        copy[int(head)] = without(value[int(head)], tail)
        return copy
    return value


def take_vector(prediction: Any, spec: EmbeddingSpec) -> Tuple[Optional[np.ndarray], Any]:
    """(the vector, the prediction without it); (None, prediction) when no vector is asked
    for. A name the prediction holds as it is (a v2 output `a.b`) wins over a dotted path."""
    if spec.field is None:
        return None, prediction
    if isinstance(prediction, dict) and spec.field in prediction:
        parts: List[str] = [spec.field]
        value = prediction[spec.field]
    else:
        parts = spec.field.split(".")
        try:
            value = value_at(prediction, spec.field)
        except LabelError:
            raise LabelError(f"prediction has no embedding at --embedding_field "
                             f"{spec.field!r}: {snippet(prediction)}")
    return vector_of(value, spec), without(prediction, parts)


def has_label_fields(rest: Any) -> bool:
    """Does what is left of a prediction beside its vector hold labels to read (a field of
    docs/predictions.md's shapes, or a {label: score} map)? Otherwise the row has none."""
    if not isinstance(rest, dict):
        return rest is not None
    keys = rest.keys()
    if any(k in keys for k in NAME_KEYS + SCORE_KEYS) or TF_ESTIMATOR_KEYS & keys:
        return True
    return bool(rest) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                              for v in rest.values())


def vector_output(outputs: Sequence[dict]) -> Optional[Tuple[str, Optional[int]]]:
    """(name, length or None) of the one output of a v2 model's metadata that is a vector:
    floating point, shape [-1, d], named as VECTOR_NAMES; None unless exactly one is."""
    found = [t for t in outputs if str(t.get("name", "")).lower() in VECTOR_NAMES
             and t.get("datatype") in FLOAT_DATATYPES and is_batch_of_vectors(t.get("shape"))]
    if len(found) != 1:
        return None
    return str(found[0]["name"]), stated_length(found[0].get("shape"))


def is_batch_of_vectors(shape: Any) -> bool:
    return isinstance(shape, list) and len(shape) == 2 and all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape)


def stated_length(shape: Any) -> Optional[int]:
    """d of a [-1, d] shape; None when it is free or no such shape."""
    if is_batch_of_vectors(shape) and shape[1] > 0:
        return int(shape[1])
    return None


def multimodal_dimension(parameters: dict) -> Optional[int]:
    """The length a multimodal request asks for (`parameters.dimension`, 1408 by default);
    None when it is no whole number (the endpoint's own answer then says what is wrong)."""
    value = parameters.get("dimension", 1408)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class VectorLength:
    """The one vector length of a run, as one worker process (one engine) sees it: the
    length the model states, else its first vector's. Used on the engine's loop thread."""

    def __init__(self, stated: Optional[int] = None):
        self.length = stated
        self._whose = "the model states" if stated else None

    def refusal(self, vector: np.ndarray) -> Optional[str]:
        """Why `vector` does not belong to this run (None when it does)."""
        if self.length is None:
            self.length, self._whose = int(vector.size), "the run's first vector has"
            return None
        if vector.size != self.length:
            return (f"embedding has {vector.size} values, not the {self.length} "
                    f"{self._whose} (one length a run)")
        return None
