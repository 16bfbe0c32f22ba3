"""A response body read once, each prediction's text kept as the endpoint sent it."""
import json

import pytest

from transforms import answertext
from transforms.labels import LabelSpec
from transforms.protocols import make_protocol

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
    value = answertext.loads(raw)
    expected = json.loads(raw)
    assert json.dumps(value) == json.dumps(expected)  # NaN != NaN: compared as text
    assert type(value) is type(expected)


@pytest.mark.parametrize("raw", [b"", b"{", b'{"predictions":[1,]}', b'{"a":1} x',
                                 b'{"a" 1}', b"\xff"])
def test_loads_refuses_what_json_loads_refuses(raw):
    with pytest.raises(ValueError):
        json.loads(raw)
    with pytest.raises(ValueError):
        answertext.loads(raw)


def test_each_prediction_keeps_its_text():
    value = answertext.loads(BODIES[1])
    assert value["predictions"].texts == ["[0.10, 1e-05]",
                                          '{"labels": ["a b"], "scores": [1]}']


@pytest.mark.parametrize("sent, compact", [
    ("[0.10,1e-05]", "[0.10,1e-05]"),
    ("[0.10, 1e-05,\n 2]", "[0.10,1e-05,2]"),
    ('{"labels":["cat"]}', '{"labels":["cat"]}'),
    ('{"labels": ["a b", " c "],\t"n": null}', '{"labels":["a b"," c "],"n":null}'),
    ('{"labels":["a\\"b"]}', '{"labels":["a\\"b"]}'),
    ('{"labels": ["a\\" b"]}', None),  # an escaped quote: where strings end is a reader's job
    ("[NaN]", None),
    ("[-Infinity]", None),
    ('["NaN"]', None),  # a string that says NaN: written out again, to be sure
])
def test_compact_text(sent, compact):
    assert answertext.compact_text(sent) == compact


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


def test_a_non_finite_score_is_still_refused():
    protocol = make_protocol("mlengine")
    (parsed,) = protocol.parse(protocol.decode(b'{"predictions":[[0.5,NaN]]}', {}), 1)
    assert parsed.error is not None and "NaN" in parsed.error
