"""A response body read once, with each prediction's own JSON text kept.

The `prediction` column holds each instance's prediction as the model answered it. Writing
the parsed value back out as JSON costs more than reading it (an ImageNet softmax is 1,000
floats, each turned back into text), so the text is taken from the body instead: `loads`
parses the top-level object key by key with the standard library's own scanner
(`JSONDecoder.raw_decode`) and keeps the text of each element of its `predictions` list.
Any body it does not read the same way as `json.loads` is left to `json.loads`.
"""
import json
import math
from typing import Any, List, Optional

_DECODER = json.JSONDecoder()
_SPACE = json.decoder.WHITESPACE  # what json.loads skips between tokens
SPACES = " \n\r\t"  # the same characters, for `in` tests


class Predictions(list):
    """A response's `predictions` list; `texts[i]` is element i's JSON text as sent."""

    def __init__(self, values: List[Any], texts: List[str]):
        super().__init__(values)
        self.texts = texts


def loads(raw: bytes) -> Any:
    """`json.loads(raw)`, where a top-level `predictions` list is a `Predictions`."""
    try:
        return _object(raw.decode("utf-8"))
    except (ValueError, IndexError):  # not UTF-8, not read here as json.loads reads it, or
        # (IndexError) the text ended where a token should have been
        return json.loads(raw)


def compact_text(text: str) -> Optional[str]:
    """One value's text without the whitespace between its tokens; None when it has
    whitespace and a backslash (an escaped quote would hide where its strings end): a JSON
    writer's job."""
    if not any(space in text for space in SPACES):
        return text
    if "\\" in text:
        return None
    parts = text.split('"')  # without escapes, the odd parts are the strings' contents
    parts[::2] = ["".join(part.split()) for part in parts[::2]]
    return '"'.join(parts)


def all_finite(value: Any) -> bool:
    """Is every float in a JSON value finite (no NaN or +-Infinity, which Python's json reads
    from NaN, Infinity and numbers too large for a float)? The common lists pass in C: a
    list of numbers whose sum is finite, a list of strings that joins."""
    kind = type(value)
    if kind is float:
        return math.isfinite(value)
    if kind is dict:
        return all(map(all_finite, value.values()))
    if kind is not list:
        return True
    try:
        if math.isfinite(sum(value)):
            return True
    except (TypeError, OverflowError):  # not all numbers; or ints too large for a float
        try:
            "".join(value)
            return True
        except TypeError:
            pass
    return all(map(all_finite, value))


def _object(text: str) -> Any:
    at = _skip(text, 0)
    if text[at] != "{":
        raise ValueError("not an object")
    result, at = {}, _skip(text, at + 1)
    if text[at] == "}":
        return _end(text, at + 1, result)
    while True:
        if text[at] != '"':
            raise ValueError("not a key")
        key, at = _DECODER.raw_decode(text, at)
        at = _skip(text, at)
        if text[at] != ":":
            raise ValueError("no colon")
        at = _skip(text, at + 1)
        if key == "predictions" and text[at] == "[":
            result[key], at = _list(text, at)
        else:
            result[key], at = _DECODER.raw_decode(text, at)
        at = _skip(text, at)
        if text[at] == "}":
            return _end(text, at + 1, result)
        if text[at] != ",":
            raise ValueError("no comma")
        at = _skip(text, at + 1)


def _list(text: str, at: int):
    values, texts = [], []
    at = _skip(text, at + 1)
    if text[at] == "]":
        return Predictions(values, texts), at + 1
    while True:
        start = at
        value, at = _DECODER.raw_decode(text, at)
        values.append(value)
        texts.append(text[start:at])
        at = _skip(text, at)
        if text[at] == "]":
            return Predictions(values, texts), at + 1
        if text[at] != ",":
            raise ValueError("no comma")
        at = _skip(text, at + 1)


def _skip(text: str, at: int) -> int:
    return _SPACE.match(text, at).end()


def _end(text: str, at: int, result: dict) -> dict:
    if _skip(text, at) != len(text):
        raise ValueError("extra data")
    return result
