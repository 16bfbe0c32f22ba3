"""What a model answered, as named and validated (label, score) lists.

Pure functions shared by every protocol: each takes one instance's prediction (or its
fields) and returns `LabelScores(labels, indexed)`, or raises `LabelError` with a message fit for a
`parse` dead letter. The rules (docs/predictions.md has one example per shape):

- A label is a name the model or the user gave. A class index (an int, or a digit string
  such as TF's `classes: ["2"]`) is named through `--label_names` when given; without it the
  label stays the index and `indexed` is set, so the caller can warn once.
- Names and scores from different fields must agree: equal lengths, and a top class the
  model names beside an unnamed score vector must be the vector's best class. Otherwise the
  prediction is refused with the flag that resolves it; nothing is guessed.
- A score is a finite number (a JSON number, or a numeric string as proto3 JSON writes
  `"NaN"`/`"Infinity"`); NaN and Infinity are refused, never written.
"""
import functools
import json
import logging
import math
import operator
import re
import threading
from typing import AbstractSet, Any, List, NamedTuple, Optional, Sequence, Tuple


from core.records import is_unicode

Labels = List[Tuple[str, float]]

NAMES_FLAGS = "--label_names or --label_names_file"
FIELD_FLAGS = "--labels_field and --scores_field"

# Field names of the common dict shapes, in order of preference.
NAME_KEYS = ("displayNames", "labels", "classes", "label", "class", "className",
             "displayName", "class_name", "name")
SCORE_KEYS = ("confidences", "scores", "probabilities", "score", "probability",
              "confidence")
TF_ESTIMATOR_KEYS = frozenset(("class_ids", "all_class_ids", "all_classes", "logits",
                               "logistic"))
_TRITON = re.compile(r"^([^:]+):(\d+)(?::(.*))?$", re.DOTALL)
_FIELD_PATH = re.compile(r"^[^.\s]+(\.[^.\s]+)*$")
SNIPPET_CHARS = 200

_LOG = logging.getLogger("batch_predict")


class LabelError(ValueError):
    """One prediction that cannot be read without guessing (a `parse` dead letter)."""


class LabelSpec(NamedTuple):
    """How to read labels: the user's class names and the fields of a custom shape."""
    names: Tuple[str, ...] = ()  # --label_names / --label_names_file, in class-index order
    labels_field: Optional[str] = None  # --labels_field, a dotted path into a prediction
    scores_field: Optional[str] = None  # --scores_field


class LabelScores(NamedTuple):
    labels: Labels
    indexed: bool = False  # some label is a bare class index (no names were given)


# -- scores and names ----------------------------------------------------------------------

def score(value: Any) -> float:
    """A finite float from a JSON number or numeric string; LabelError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise LabelError(f"score {snippet(value)} is not a number")
    try:
        number = float(value)
    except ValueError:
        raise LabelError(f"score {snippet(value)} is not a number")
    except OverflowError:  # an int too large for a float
        raise LabelError(f"score {snippet(value)} is not a finite number (too large)")
    if not math.isfinite(number):
        raise LabelError(f"score {snippet(value)} is not a finite number "
                         "(NaN and Infinity are never written)")
    return number


def scores(values: Any) -> List[float]:
    """`score` of each value; the common case (plain finite numbers) in one C-level pass."""
    if not isinstance(values, list):
        raise LabelError(f"scores {snippet(values)} are not a list")
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError, OverflowError):
        numbers = None
    if numbers is None or bool in set(map(type, values)) or not all(
            map(math.isfinite, numbers)):
        return [score(v) for v in values]  # raises, naming the bad value
    return numbers


def class_index(value: Any) -> Optional[int]:
    """The class index `value` stands for (2, 2.0, "2"), or None when it is a name."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def label_name(value: Any, names: Sequence[str],
               known: Optional[AbstractSet[str]] = None) -> Tuple[str, bool]:
    """(label, is_bare_index) for a label the model gave: a name, or a class index named
    through `names`. A name must be one of `names` when names are given (`known`: the same
    names as a set, for callers that name many labels)."""
    if isinstance(value, str) and value in (names if known is None else known):
        return value, False
    index = class_index(value)
    if index is not None:
        if not names:
            return str(index), True
        if not 0 <= index < len(names):
            raise LabelError(f"class index {index} is outside the {len(names)} names of "
                             f"{NAMES_FLAGS}")
        return names[index], False
    if not isinstance(value, str):
        raise LabelError(f"label {snippet(value)} is not a name or a class index")
    if names:
        raise LabelError(f"the model's label {value!r} is not one of the {len(names)} names "
                         f"of {NAMES_FLAGS}")
    return value, False


def pair(labels: Sequence[Any], values: Sequence[Any], names: Sequence[str] = ()) -> LabelScores:
    """Labels and scores from two parallel lists."""
    if len(labels) != len(values):
        raise LabelError(f"prediction has {len(labels)} labels but {len(values)} scores "
                         f"(point {FIELD_FLAGS} at two lists of one length)")
    known = frozenset(names)
    named = [label_name(v, names, known) for v in labels]
    return LabelScores([(n, s) for (n, _), s in zip(named, scores(list(values)))],
                 any(i for _, i in named))


def name_scores(values: Sequence[Any], names: Sequence[str] = ()) -> LabelScores:
    """An unnamed score vector, named by `names` (class-index order) or by its indices."""
    numbers = scores(list(values))
    if names and len(names) != len(numbers):
        raise LabelError(f"prediction has {len(numbers)} scores but {NAMES_FLAGS} names "
                         f"{len(names)}")
    if names:
        return LabelScores(list(zip(names, numbers)))
    return LabelScores(list(zip(index_names(len(numbers)), numbers)), bool(numbers))


@functools.lru_cache(maxsize=8)
def index_names(count: int) -> Tuple[str, ...]:
    """"0", "1", ...: the labels of an unnamed vector of `count` scores (one length a model)."""
    return tuple(map(str, range(count)))


def check_top(named: LabelScores, top: Any, names: Sequence[str]) -> LabelScores:
    """`named` (from an unnamed or differently named vector) if the model's own top class
    `top` is its best one.

    A top class given as a name cannot be checked against index labels: the names of the
    other classes are unknown, so the prediction is refused rather than mislabelled.
    """
    if isinstance(top, list) and len(top) == 1:
        top = top[0]
    if not named.labels:
        return named
    best = max(s for _, s in named.labels)
    tied = [label for label, s in named.labels if s == best]
    if isinstance(top, str) and any(top == label for label, _ in named.labels):
        expected = top
    elif not names and class_index(top) is None:
        raise LabelError(f"prediction names its top class {snippet(top)} but its "
                         f"{len(named.labels)} scores are unnamed: give {NAMES_FLAGS} (in the "
                         f"model's class order), or {FIELD_FLAGS}")
    else:
        expected, _ = label_name(top, names)
    if expected not in tied:
        raise LabelError(f"prediction names its top class {snippet(top)} but its best score "
                         f"is class {tied[0]!r}: check the order of {NAMES_FLAGS}, or give "
                         f"{FIELD_FLAGS}")
    return named


def check_top_index(values: Sequence[float], top: Any):
    """The class id the model gives as its top class is the index of its best score."""
    if isinstance(top, list) and len(top) == 1:
        top = top[0]
    index = class_index(top)
    if index is None or not 0 <= index < len(values):
        raise LabelError(f"top class id {snippet(top)} is not an index of the "
                         f"{len(values)} scores")
    if values[index] != max(values):
        raise LabelError(f"top class id {index} is not the class with the best score "
                         f"({values.index(max(values))})")


def label_map(mapping: dict, names: Sequence[str] = ()) -> LabelScores:
    """A TorchServe-style `{label: score}` map."""
    return pair(list(mapping), list(mapping.values()), names)


def triton_class(text: str, names: Sequence[str] = ()) -> Tuple[str, float, bool]:
    """One Triton classification string `score:index[:label]` as (label, score, indexed).
    A label the model gives must be the name `names` gives its index."""
    match = _TRITON.match(text) if isinstance(text, str) else None
    if not match:
        raise LabelError(f"{snippet(text)} is not a `score:index[:label]` classification")
    value, index, label = match.groups()
    name, indexed = label_name(int(index), names) if names or not label else (label, False)
    if label and name != label:
        raise LabelError(f"the model labels class {index} {label!r} but {NAMES_FLAGS} "
                         f"names it {name!r}")
    return name, score(value), indexed


def is_triton_classes(values: Any) -> bool:
    """A non-empty list of Triton classification strings."""
    return isinstance(values, list) and bool(values) and all(
        isinstance(v, str) and _TRITON.match(v) for v in values)


def triton_classes(texts: Sequence[str], names: Sequence[str] = ()) -> LabelScores:
    read = [triton_class(t, names) for t in texts]
    return LabelScores([(n, s) for n, s, _ in read], any(i for _, _, i in read))


# -- shapes --------------------------------------------------------------------------------

def read_labels(prediction: Any, spec: LabelSpec = LabelSpec()) -> LabelScores:
    """Labels and scores of one prediction, in any shape docs/predictions.md lists."""
    if spec.labels_field or spec.scores_field:
        return from_fields(prediction, spec)
    if isinstance(prediction, dict):
        return from_dict(prediction, spec.names)
    if isinstance(prediction, list):
        return from_list(prediction, spec.names)
    if isinstance(prediction, float):
        return single_score(prediction, spec.names)
    if isinstance(prediction, (str, int)) and not isinstance(prediction, bool):
        name, indexed = label_name(prediction, spec.names)
        return LabelScores([(name, 1.0)], indexed)
    raise LabelError(f"cannot read labels from prediction {snippet(prediction)} "
                     f"(give {FIELD_FLAGS})")


def from_fields(prediction: Any, spec: LabelSpec) -> LabelScores:
    """The shape the user pointed at with --labels_field / --scores_field."""
    labels = value_at(prediction, spec.labels_field) if spec.labels_field else None
    values = value_at(prediction, spec.scores_field) if spec.scores_field else None
    return labels_with_scores(labels, values, spec.names)


def labels_with_scores(labels: Any, values: Any, names: Sequence[str]) -> LabelScores:
    """Labels (a list, one top class, or None) with scores (a list, a map, one number, or
    None), checked against each other."""
    if isinstance(values, dict) and labels is None:
        return label_map(values, names)
    if isinstance(values, list):
        if isinstance(labels, list) and not (len(labels) == 1 and len(values) > 1):
            return pair(labels, values, names)
        named = name_scores(values, names)
        return named if labels is None else check_top(named, labels, names)
    if isinstance(labels, list):
        if values is not None:
            raise LabelError(f"prediction has {len(labels)} labels but one score "
                             f"(point {FIELD_FLAGS} at two lists of one length)")
        raise LabelError(f"prediction has {len(labels)} labels and no scores "
                         f"(give --scores_field)")
    if labels is None:
        if values is None:
            raise LabelError("prediction has neither labels nor scores")
        return single_score(values, names)
    name, indexed = label_name(labels, names)
    return LabelScores([(name, 1.0 if values is None else score(values))], indexed)


def single_score(value: Any, names: Sequence[str]) -> LabelScores:
    """One number alone (a regression or a binary score): the one name given, else `value`."""
    return LabelScores([(names[0] if len(names) == 1 else "value", score(value))])


def from_dict(prediction: dict, names: Sequence[str]) -> LabelScores:
    if "probabilities" in prediction and TF_ESTIMATOR_KEYS & prediction.keys():
        return tf_estimator(prediction, names)
    found_name = next((k for k in NAME_KEYS if k in prediction), None)
    found_score = next((k for k in SCORE_KEYS if k in prediction), None)
    if found_name is None and found_score is None and prediction and all(
            isinstance(v, (int, float)) and not isinstance(v, bool)
            for v in prediction.values()):
        return label_map(prediction, names)
    if found_name is None and found_score is None:
        raise LabelError(f"cannot read labels from prediction {snippet(prediction)} "
                         f"(give {FIELD_FLAGS})")
    return labels_with_scores(prediction.get(found_name), prediction.get(found_score), names)


def tf_estimator(prediction: dict, names: Sequence[str]) -> LabelScores:
    """A TF canned-estimator classifier: `probabilities` (indexed by class id) over
    `all_classes` (or `all_class_ids`); its top class in `class_ids` / `classes` is checked."""
    probabilities = scores(prediction["probabilities"])
    classes = prediction.get("all_classes", prediction.get("all_class_ids"))
    if isinstance(classes, list):
        named = pair(classes, probabilities, names)
    else:
        named = name_scores(probabilities, names)
    if "class_ids" in prediction and probabilities:
        check_top_index(probabilities, prediction["class_ids"])
    if "classes" in prediction:
        check_top(named, prediction["classes"], names)
    return named


def from_list(prediction: list, names: Sequence[str]) -> LabelScores:
    """A list: `{label, score}` records, Triton strings, `[label, score]` pairs, or scores."""
    if prediction and all(isinstance(p, dict) for p in prediction):
        read = [record(p, names) for p in prediction]
        return LabelScores([l for r in read for l in r.labels], any(r.indexed for r in read))
    if is_triton_classes(prediction):
        return triton_classes(prediction, names)
    if prediction and all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)
                          for p in prediction):
        return pair([p[0] for p in prediction], [p[1] for p in prediction], names)
    if prediction and all(isinstance(p, str) and class_index(p) is None for p in prediction):
        raise LabelError(f"prediction is a list of {len(prediction)} names without scores "
                         f"(give {FIELD_FLAGS})")
    return name_scores(prediction, names)


def record(item: dict, names: Sequence[str]) -> LabelScores:
    """One `{label, score}`-like record of a list (HF pipelines, DJL `className/probability`)."""
    found_name = next((k for k in NAME_KEYS if k in item), None)
    found_score = next((k for k in SCORE_KEYS if k in item), None)
    if found_name is None or found_score is None or isinstance(item[found_name], list):
        raise LabelError(f"cannot read a label and a score from {snippet(item)} "
                         f"(give {FIELD_FLAGS})")
    return labels_with_scores(item[found_name], item[found_score], names)


# -- fields, names, and the one-time warning -----------------------------------------------

def check_field_path(path: Optional[str], flag: str) -> Optional[str]:
    """A dotted path as given (`outputs.scores`, `0.probs`); ValueError for a malformed one."""
    if path is not None and not _FIELD_PATH.match(path):
        raise ValueError(f"{flag} {path!r} is not a dotted path such as outputs.scores")
    return path


def value_at(prediction: Any, path: str) -> Any:
    """The value at a dotted path (list items by number); LabelError when it is absent."""
    value = prediction
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise LabelError(f"prediction has no field {path!r}: {snippet(prediction)}")
    return value


class _Once:
    """A process-wide flag set by the first caller."""

    def __init__(self):
        self._lock = threading.Lock()
        self._done = False

    def first(self) -> bool:
        with self._lock:
            first, self._done = not self._done, True
            return first

    def reset(self):
        with self._lock:
            self._done = False


INDEX_WARNING = _Once()


def unicode_labels(named: LabelScores) -> LabelScores:
    """`named`, or LabelError when a label is no Unicode text: a lone surrogate (`"\\ud800"`
    is valid JSON, but no character, and no UTF-8 writer takes it)."""
    names = "".join(map(operator.itemgetter(0), named.labels))
    if is_unicode(names):
        return named
    bad = next(name for name, _ in named.labels if not is_unicode(name))
    raise LabelError(f"label {ascii(bad)} is not Unicode text (it holds a lone surrogate)")


def warn_if_indexed(named: LabelScores) -> LabelScores:
    """Log, once per worker process, that labels are bare class indices."""
    if named.indexed and INDEX_WARNING.first():
        _LOG.warning("the model answers unnamed scores or class indices: labels are the "
                     "class indices (0, 1, ...); give %s to name them", NAMES_FLAGS)
    return named


def snippet(value: Any, limit: int = SNIPPET_CHARS) -> str:
    """A value from a prediction as JSON text, cut to `limit` characters."""
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= limit else text[:limit] + "..."
