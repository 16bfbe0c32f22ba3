"""A response body read once, each prediction's text kept as the endpoint sent it."""
import json

import pytest

from protocols import answers, make_protocol
from protocols.labels import LabelSpec

BODIES = [
    b'{"predictions":[[0.1,0.9],[0.5,0.5]]}',
    b'{\n  "predictions": [\n    [0.10, 1e-05],\n    {"labels": ["a b"], "scores": [1]}\n  ]\n}\n',
    b'{"deployedModelId":"7","predictions":[],"model":"m"}',
    b'{"predictions":[1,2],"predictions":[{"x":null}]}',  # json.loads keeps the last
    b'{"predictions":{"not":"a list"}}',
    b'{}',
    b' { "predictions" : [ "caf\\u00e9" , true ] } ',
    b'{"predictions":[NaN,Infinity,-Infinity]}',
    b'[1,2]',
    b'"text"',
    '{"predictions":[{"label":"café"}]}'.encode("utf-8"),
    b'\xef\xbb\xbf{"predictions":[1]}',  # a UTF-8 byte-order mark
    '{"predictions":[1]}'.encode("utf-16"),
]


@pytest.mark.parametrize("raw", BODIES)
def test_loads_reads_what_json_loads_reads(raw):
    value = answers.loads(raw)
    expected = json.loads(raw)
    assert json.dumps(value) == json.dumps(expected)  # NaN != NaN: compared as text
    assert type(value) is type(expected)


@pytest.mark.parametrize("raw", [b"", b"{", b'{"predictions":[1,]}', b'{"a":1} x',
                                 b'{"a" 1}', b"\xff"])
def test_loads_refuses_what_json_loads_refuses(raw):
    with pytest.raises(ValueError):
        json.loads(raw)
    with pytest.raises(ValueError):
        answers.loads(raw)


def test_each_prediction_keeps_its_text():
    value = answers.loads(BODIES[1])
    assert value["predictions"].texts == ["[0.10, 1e-05]",
                                          '{"labels": ["a b"], "scores": [1]}']


@pytest.mark.parametrize("sent, compact", [
    ("[0.10,1e-05]", "[0.10,1e-05]"),
    ("[0.10, 1e-05,\n 2]", "[0.10,1e-05,2]"),
    ('{"labels":["cat"]}', '{"labels":["cat"]}'),
    ('{"labels": ["a b", " c "],\t"n": null}', '{"labels":["a b"," c "],"n":null}'),
    ('{"labels":["a\\"b"]}', '{"labels":["a\\"b"]}'),
    ('{"labels": ["a\\" b"]}', None),  # an escaped quote: where strings end is a reader's job
])
def test_compact_text(sent, compact):
    assert answers.compact_text(sent) == compact


@pytest.mark.parametrize("text, finite", [
    ("[0.5, 1, true, null]", True), ('{"a": [[1e308, 1e308], "x"], "b": {"c": -0.0}}', True),
    ("[" + "9" * 400 + "]", True),  # an int too large for a float is still a finite number
    ("NaN", False), ("[1, -Infinity]", False), ('{"a": {"b": [0.5, 1e999]}}', False),
    ('[["x", 2], [3, ' + "9" * 309 + '.0]]', False)])
def test_all_finite(text, finite):
    assert answers.all_finite(json.loads(text)) is finite


def test_the_prediction_column_is_the_models_own_text():
    """`1.50` stays `1.50` and `1E-5` stays `1E-5`: the column is what the model said, not
    Python's rewriting of it, without the spaces between its tokens."""
    protocol = make_protocol("mlengine", labels=LabelSpec(names=("cat", "dog")))
    raw = (b'{"predictions": [\n  [1.50, 1E-5],\n  {"labels":["cat"],"scores":[0.90]},\n'
           b'  {"labels": ["dog"], "scores": [0.80]},\n  {"labels": ["c\\u0061t"], '
           b'"scores": [0.70]}\n]}')
    parsed = protocol.parse(protocol.decode(raw, {}), 4)
    assert [p.prediction for p in parsed] == [
        "[1.50,1E-5]", '{"labels":["cat"],"scores":[0.90]}',
        '{"labels":["dog"],"scores":[0.80]}',
        '{"labels":["cat"],"scores":[0.7]}']  # a backslash and spaces: written out again
    assert [p.labels[0] for p in parsed] == [("cat", 1.5), ("cat", 0.9), ("dog", 0.8),
                                             ("cat", 0.7)]


def test_vertex_keeps_the_text_too():
    protocol = make_protocol("vertex")
    raw = b'{"predictions":[{"displayNames":["x"],"confidences":[0.250]}]}'
    (parsed,) = protocol.parse(protocol.decode(raw, {}), 1)
    assert parsed.prediction == '{"displayNames":["x"],"confidences":[0.250]}'


@pytest.mark.parametrize("raw", [b'{"predictions":[[0.5,NaN]]}',
                                 b'{"predictions":[{"scores":[0.5],"logits":[1e999]}]}',
                                 b'{"predictions":[{"scores":[0.5],"logits":[-1E+400]}]}'])
def test_a_non_finite_number_is_still_refused(raw):
    """docs/predictions.md: a non-finite number anywhere in a kept prediction refuses it."""
    protocol = make_protocol("mlengine")
    (parsed,) = protocol.parse(protocol.decode(raw, {}), 1)
    assert parsed.error is not None and "finite" in parsed.error


def random_value(rng, depth=0):
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.randint(-10**6, 10**6)
    if kind == 2:
        return rng.choice([0.5, -1e-7, 1.0e10, rng.random()])
    if kind in (3, 4):
        return rng.choice(["", "a b", ' "q" ', "tab\there", "back\\slash", "é", "\u2028",
                           "NaN", "line\nbreak", "}{][,:", 'x" y'])
    if kind in (5, 6):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["labels", "scores", "k", "a b", "é"]): random_value(rng, depth + 1)
            for _ in range(rng.randrange(4))}


def written(rng, value):
    """JSON text of `value` with random whitespace between tokens and random escaping."""
    space = lambda: rng.choice(["", " ", "\n  ", "\t", " \r\n"])  # noqa: E731
    if isinstance(value, list):
        return "[" + space() + ("," + space()).join(
            written(rng, v) + space() for v in value) + "]"
    if isinstance(value, dict):
        return "{" + space() + ",".join(
            space() + json.dumps(k, ensure_ascii=rng.random() < 0.5) + space() + ":" + space()
            + written(rng, v) + space() for k, v in value.items()) + "}"
    return json.dumps(value, ensure_ascii=rng.random() < 0.5)


def test_random_bodies_read_as_json_loads_reads_them():
    """300 seeded random answers: the same value as json.loads, each prediction's text is
    that prediction, and its compact text (when there is one) is too, with no whitespace
    left outside its strings."""
    import random
    rng = random.Random(13)
    for _ in range(300):
        predictions = [random_value(rng) for _ in range(rng.randrange(5))]
        body = {"predictions": predictions, "deployedModelId": "1"}
        raw = ("{" + ",".join(f' {json.dumps(k)} :\n {written(rng, v)} '
                              for k, v in body.items()) + "}").encode("utf-8")
        value = answers.loads(raw)
        assert value == json.loads(raw)
        for text, prediction in zip(value["predictions"].texts, predictions):
            assert json.loads(text) == prediction
            compact = answers.compact_text(text)
            if compact is not None:
                assert json.loads(compact) == prediction
                outside = compact.split('"')[::2]
                assert not any(c in part for part in outside for c in " \n\r\t"), compact
