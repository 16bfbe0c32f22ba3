"""The Open Inference Protocol's request building and response reading, as pure functions."""
import json
import logging
import struct

import numpy as np
import pytest
from PIL import Image

from core.records import Instance
from imaging.tensor import TensorSpec, to_tensor
from protocols import make_protocol
from protocols.base import resource_name, ResponseError
from protocols.labels import INDEX_WARNING, LabelSpec
from protocols.v2 import (decode_response, HEADER_LENGTH, instance_outputs, model_path,
                          output_tensors, read_outputs, unpack, V2)
from transforms.pack import pack

IMAGES = [b"\xff\xd8first", b"\x89PNGsecond!", b"third"]


def v2(**options):
    return make_protocol("v2", options.pop("instance_format", "b64"),
                         **{"input_name": "image", **options})


def test_json_body_is_one_bytes_tensor_of_base64_images():
    protocol = v2()
    body, headers = protocol.request([protocol.instance("k", d, "image/jpeg") for d in IMAGES])
    assert headers == {}
    request = json.loads(body)
    assert request == {"inputs": [{"name": "image", "shape": [3], "datatype": "BYTES",
                                   "data": ["/9hmaXJzdA==", "iVBOR3NlY29uZCE=", "dGhpcmQ="]}]}


def test_binary_body_is_the_json_header_then_length_prefixed_images():
    protocol = v2(binary=True)
    body, headers = protocol.request([protocol.instance("k", d, "") for d in IMAGES])
    size = int(headers[HEADER_LENGTH])
    header = json.loads(body[:size])
    tail = body[size:]
    assert header["inputs"][0]["parameters"] == {"binary_data_size": len(tail)}
    assert "data" not in header["inputs"][0] and header["inputs"][0]["shape"] == [3]
    assert unpack("BYTES", tail) == [d.decode("utf-8", "replace") for d in IMAGES]
    assert headers["Content-Type"] == "application/octet-stream"


def test_binary_images_are_about_a_quarter_smaller_than_json():
    data = bytes(range(256)) * 40
    json_size = v2().body_size([len(v2().instance("k", data, ""))])
    binary_size = v2(binary=True).body_size([len(v2(binary=True).instance("k", data, ""))])
    assert binary_size < json_size * 0.77


@pytest.mark.parametrize("options", [{}, {"binary": True}, {"parameters": {"threshold": 0.5}},
                                     {"binary": True, "classification": 3},
                                     {"instance_format": "tensor",
                                      "tensor": TensorSpec((2, 1), dtype="FP32"), "binary": True},
                                     {"instance_format": "tensor",
                                      "tensor": TensorSpec((2, 1), dtype="FP16",
                                                           layout="NCHW", mean=(1, 2, 3))}])
def test_body_size_is_exact_for_any_count(options):
    protocol = v2(**options).with_model("image", ("scores",))
    pixels = np.array([[[1, 2, 3], [250, 251, 252]]], np.uint8)
    if protocol.tensor is not None:
        pixels = to_tensor(Image.fromarray(pixels), protocol.tensor)
    for count in (1, 2, 9, 10, 11, 120):
        instances = [protocol.instance("k", IMAGES[i % 3] * (i + 1), "", pixels)
                     for i in range(count)]
        body, _ = protocol.request(instances)
        assert protocol.body_size([len(i) for i in instances]) == len(body), count


def test_packed_requests_stay_under_the_byte_cap_counted_on_the_exact_body():
    protocol = v2(binary=True)
    instances = [Instance(f"k{i}", protocol.instance("k", b"x" * (100 + i), ""))
                 for i in range(50)]
    requests = list(pack(instances, protocol, 1000, 1200))
    assert sum(len(r.keys) for r in requests) == 50
    for request in requests:
        assert len(protocol.request(request.instances)[0]) <= 1200
    assert max(len(r.keys) for r in requests) > 1


def test_tensor_instances_are_pixels_of_shape_n_h_w_3_or_n_3_h_w():
    img = Image.fromarray(np.array([[[1, 2, 3], [4, 5, 6]]], np.uint8))  # 1 row, 2 columns
    protocol = v2(instance_format="tensor", tensor=TensorSpec((2, 1)))
    instance = protocol.instance("k", b"", "", to_tensor(img, protocol.tensor))
    body, _ = protocol.request([instance] * 2)
    tensor = json.loads(body)["inputs"][0]
    assert tensor["shape"] == [2, 1, 2, 3] and tensor["datatype"] == "UINT8"
    assert tensor["data"] == [1, 2, 3, 4, 5, 6] * 2
    spec = TensorSpec((2, 1), dtype="FP32", layout="NCHW", mean=(1, 1, 1), std=(2, 2, 2))
    binary = v2(instance_format="tensor", tensor=spec, binary=True)
    assert struct.unpack("<6f", binary.instance("k", b"", "", to_tensor(img, spec))) == (
        0, 1.5, 0.5, 2, 1, 2.5)  # channel by channel: R of both pixels, then G, then B
    body, _ = binary.request([binary.instance("k", b"", "", to_tensor(img, spec))])
    assert b'"shape":[1,3,1,2],"datatype":"FP32"' in body
    as_json = v2(instance_format="tensor", tensor=spec)
    sent = json.loads(as_json.request([as_json.instance("k", b"", "", to_tensor(img, spec))])[0])
    assert sent["inputs"][0]["data"] == [0, 1.5, 0.5, 2, 1, 2.5]


def test_tensor_instances_need_the_tensor_spec():
    with pytest.raises(ValueError, match="input shape"):
        v2(instance_format="tensor").instance("k", b"", "", np.zeros((1, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="instance_format tensor"):
        v2(tensor=TensorSpec((2, 1)))


def test_parameters_and_requested_outputs_go_in_the_request():
    protocol = v2(parameters={"top_k": 2}, binary=True, classification=2).with_model(
        "pixels", ("probs",))
    body, headers = protocol.request([protocol.instance("k", b"abc", "")])
    header = json.loads(body[:int(headers[HEADER_LENGTH])])
    assert header["parameters"] == {"top_k": 2}
    assert header["inputs"][0]["name"] == "pixels"
    assert header["outputs"] == [{"name": "probs", "parameters": {"binary_data": True,
                                                                  "classification": 2}}]


def output(name, datatype, shape, data):
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def test_score_tensor_is_named_by_label_names():
    protocol = v2(labels=LabelSpec(("cat", "dog")))
    parsed = protocol.parse({"outputs": [output("probs", "FP32", [2, 2],
                                                [0.1, 0.9, 0.8, 0.2])]}, 2)
    assert [p.labels for p in parsed] == [[("cat", 0.1), ("dog", 0.9)],
                                          [("cat", 0.8), ("dog", 0.2)]]


def test_score_tensor_of_another_width_than_label_names_is_refused_per_image():
    parsed = v2(labels=LabelSpec(("a", "b", "c"))).parse(
        {"outputs": [output("probs", "FP32", [2, 2], [0.1, 0.9, 0.2, 0.8])]}, 2)
    assert [p.error for p in parsed] == [
        "prediction has 2 scores but --label_names or --label_names_file names 3"] * 2


def test_bytes_label_tensor_pairs_with_the_score_tensor_nested_data_too():
    response = {"outputs": [output("labels", "BYTES", [2, 2], [["dog", "cat"], ["cat", "dog"]]),
                            output("scores", "FP32", [2, 2], [[0.7, 0.3], [0.6, 0.4]])]}
    parsed = v2().parse(response, 2)
    assert [p.labels for p in parsed] == [[("dog", 0.7), ("cat", 0.3)],
                                          [("cat", 0.6), ("dog", 0.4)]]


def test_triton_classification_strings():
    response = {"outputs": [output("probs", "BYTES", [2, 2],
                                   ["0.75:3:tabby", "0.25:1:tiger", "0.5:0", "1e-2:1"])]}
    parsed = v2(labels=LabelSpec(("zero", "tiger", "two", "tabby"))).parse(response, 2)
    assert parsed[0].labels == [("tabby", 0.75), ("tiger", 0.25)]
    assert parsed[1].labels == [("zero", 0.5), ("tiger", 0.01)]


@pytest.mark.parametrize("shape,data", [([2, 2], [0.1, 0.9, 0.8, 0.2]),
                                        ([4], [0.1, 0.9, 0.8, 0.2])])
def test_first_dimension_other_than_the_image_count_is_an_error(shape, data):
    with pytest.raises(ResponseError, match="for 3 images"):
        v2().parse({"outputs": [output("probs", "FP32", shape, data)]}, 3)


def test_v2_error_body_is_a_response_error():
    with pytest.raises(ResponseError, match="bad image"):
        v2().parse({"error": "bad image"}, 2)


def test_two_numeric_outputs_are_refused_naming_the_field_flags():
    response = {"outputs": [output("a", "FP32", [1, 1], [0.1]),
                            output("b", "FP32", [1, 1], [0.2])]}
    assert v2().parse(response, 1)[0].error == (
        "cannot tell labels from scores among the outputs a, b: name them with "
        "--labels_field and --scores_field")


def test_data_shorter_than_its_shape_is_an_error():
    with pytest.raises(ResponseError, match="has 3 elements"):
        output_tensors({"outputs": [output("a", "FP32", [2, 2], [0.1, 0.2, 0.3])]})


def test_binary_outputs_are_decoded_after_the_json_header():
    labels = b"".join(struct.pack("<I", len(s)) + s for s in (b"dog", b"cat"))
    scores = struct.pack("<2f", 0.75, 0.25)
    header = json.dumps({"model_name": "m", "outputs": [
        {"name": "labels", "datatype": "BYTES", "shape": [1, 2],
         "parameters": {"binary_data_size": len(labels)}},
        {"name": "scores", "datatype": "FP32", "shape": [1, 2],
         "parameters": {"binary_data_size": len(scores)}}]}).encode()
    response = decode_response(header + labels + scores, {HEADER_LENGTH: str(len(header))})
    assert v2().parse(response, 1)[0].labels == [("dog", 0.75), ("cat", 0.25)]
    assert v2().model_name(response, "http://x") == "m"


def test_binary_outputs_of_the_wrong_size_are_unreadable():
    header = json.dumps({"outputs": [{"name": "s", "datatype": "FP32", "shape": [1, 2],
                                      "parameters": {"binary_data_size": 8}}]}).encode()
    with pytest.raises(ValueError):
        decode_response(header + b"\0" * 7, {HEADER_LENGTH: str(len(header))})


@pytest.mark.parametrize("parameters, datatype", [
    ([1], "FP32"), ({"binary_data_size": "4"}, "FP32"), ({"binary_data_size": 4.0}, "FP32"),
    ({"binary_data_size": 4}, [])])
def test_binary_output_headers_of_the_wrong_json_type_are_unreadable(parameters, datatype):
    header = json.dumps({"outputs": [{"name": "s", "datatype": datatype, "shape": [1],
                                      "parameters": parameters}]}).encode()
    with pytest.raises(ValueError, match="malformed binary output header"):
        decode_response(header + b"\0" * 4, {HEADER_LENGTH: str(len(header))})


@pytest.mark.parametrize("shape, depth", [([float("inf")], 0), ([1], 3000)])
def test_output_tensors_that_cannot_be_read_are_response_errors(shape, depth):
    """A shape of Infinity (no int), and data nested 3,000 deep (past the reader's
    recursion, and past what the error's snippet can print)."""
    data = [1.0]
    for _ in range(depth):
        data = [data]
    with pytest.raises(ResponseError, match="unreadable output tensor"):
        output_tensors({"outputs": [output("a", "FP32", shape, data)]})


def test_model_name_prefers_the_vertex_deployed_model_header():
    response = decode_response(b'{"model_name": "m", "outputs": []}',
                               {"X-Vertex-AI-Deployed-Model-id": "123"})
    assert v2().model_name(response, "http://x") == "123"
    assert v2().model_name({"model_name": "m", "model_version": "2"}, "") == "m/versions/2"


def test_model_path_of_infer_urls():
    assert model_path("https://h/v2/models/resnet/infer") == ("https://h", "/v2/models/resnet")
    assert model_path("http://h:8080/p/v2/models/r/versions/3/infer") == (
        "http://h:8080/p", "/v2/models/r/versions/3")
    assert model_path("http://h/v1/models/r:predict") is None


def test_instance_outputs_are_positional_per_image():
    tensors = output_tensors({"outputs": [output("s", "FP64", [3, 1], [0.1, 0.2, 0.3]),
                                          output("t", "BYTES", [3], ["x", "y", "z"])]})
    assert instance_outputs(tensors, 3) == [{"s": [0.1], "t": ["x"]}, {"s": [0.2], "t": ["y"]},
                                            {"s": [0.3], "t": ["z"]}]
    assert [read_outputs({"s": [v]}, LabelSpec(("only",))).labels for v in (0.1, 0.2)] == [
        [("only", 0.1)], [("only", 0.2)]]


def test_protocols_compare_by_value():
    assert v2(binary=True) == v2(binary=True) != v2()
    assert hash(v2().with_model("a", ())) == hash(v2().with_model("a", ()))
    assert isinstance(v2(), V2)


def test_model_name_of_vertex_dedicated_and_raw_predict_urls():
    dedicated = ("https://1234.us-central1-567.prediction.vertexai.goog/v1/projects/p/"
                 "locations/us-central1/endpoints/1234")
    assert resource_name(dedicated + ":predict") == resource_name(dedicated + ":rawPredict") \
        == "projects/p/locations/us-central1/endpoints/1234"


def test_non_finite_scores_refuse_their_image_alone():
    for bad in (float("nan"), float("inf")):
        first, second = v2().parse(
            {"outputs": [output("s", "FP32", [2, 2], [0.5, 0.25, 0.5, bad])]}, 2)
        assert first.labels == [("0", 0.5), ("1", 0.25)] and first.error is None
        assert second.labels == [] and "is not a finite number" in second.error


EXTRA = {"outputs": [output("embedding", "FP32", [2, 3], [1, 2, 3, 4, 5, 6]),
                     output("names", "BYTES", [2, 2], ["cat", "dog", "dog", "cat"]),
                     output("probs", "FP32", [2, 2], [0.75, 0.25, 0.5, 0.5])]}


def test_label_and_score_fields_pick_output_tensors_by_name():
    parsed = v2(labels=LabelSpec(labels_field="names", scores_field="probs")).parse(EXTRA, 2)
    assert [p.labels for p in parsed] == [[("cat", 0.75), ("dog", 0.25)],
                                          [("dog", 0.5), ("cat", 0.5)]]
    assert v2().parse(EXTRA, 2)[0].error.startswith("cannot tell labels from scores")


def test_scores_field_alone_is_named_by_the_label_names():
    names = LabelSpec(("x", "y", "z"), scores_field="embedding")
    assert v2(labels=names).parse(EXTRA, 2)[1].labels == [("x", 4.0), ("y", 5.0), ("z", 6.0)]


def test_labels_field_of_classification_strings():
    response = {"outputs": [output("top", "BYTES", [1, 2], ["0.75:1", "0.25:0"]),
                            output("probs", "FP32", [1, 2], [0.25, 0.75])]}
    parsed = v2(labels=LabelSpec(("cat", "dog"), labels_field="top")).parse(response, 1)
    assert parsed[0].labels == [("dog", 0.75), ("cat", 0.25)]


def test_a_field_naming_no_output_is_refused_with_the_outputs_listed():
    parsed = v2(labels=LabelSpec(scores_field="logits")).parse(EXTRA, 2)
    assert {p.error for p in parsed} == {
        "--scores_field logits: the response has no such output (its outputs: embedding, "
        "names, probs)"}


@pytest.mark.parametrize("data,error", [
    (["0.5:7"], "class index 7 is outside the 2 names of --label_names or --label_names_file"),
    (["NaN:1"], "is not a finite number")])
def test_classification_strings_are_checked_against_the_label_names(data, error):
    response = {"outputs": [output("top", "BYTES", [1, 1], data)]}
    parsed = v2(labels=LabelSpec(("cat", "dog"))).parse(response, 1)
    assert parsed[0].labels == [] and error in parsed[0].error


def test_label_tensor_naming_no_given_name_is_refused():
    response = {"outputs": [output("labels", "BYTES", [1, 2], ["cat", "lion"]),
                            output("scores", "FP32", [1, 2], [0.5, 0.5])]}
    parsed = v2(labels=LabelSpec(("cat", "dog"))).parse(response, 1)
    assert "the model's label 'lion' is not one of the 2 names" in parsed[0].error


def test_prediction_is_the_images_slice_of_the_outputs_as_compact_json():
    first, second = v2(labels=LabelSpec(labels_field="names", scores_field="probs")).parse(
        EXTRA, 2)
    assert first.prediction == \
        '{"embedding":[1,2,3],"names":["cat","dog"],"probs":[0.75,0.25]}'
    assert json.loads(second.prediction) == {"embedding": [4, 5, 6], "names": ["dog", "cat"],
                                             "probs": [0.5, 0.5]}
    kept_out = make_protocol("v2", "b64", LabelSpec(labels_field="names", scores_field="probs"),
                             keep_prediction=False, input_name="image")
    assert [p.prediction for p in kept_out.parse(EXTRA, 2)] == [None, None]


def test_unnamed_scores_warn_once_that_labels_are_indices(caplog):
    INDEX_WARNING.reset()
    response = {"outputs": [output("s", "FP32", [2, 2], [0.5, 0.25, 0.5, 0.25])]}
    with caplog.at_level(logging.WARNING, logger="batch_predict"):
        for _ in range(3):
            v2().parse(response, 2)
        v2(labels=LabelSpec(("a", "b"))).parse(response, 2)
    assert len([r for r in caplog.records if "class indices" in r.getMessage()]) == 1


@pytest.mark.parametrize("dtype", ["UINT8", "FP16", "FP32"])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("binary", [False, True])
def test_tensor_request_sizes_are_exact_for_every_dtype_and_layout(dtype, layout, binary):
    normalised = {} if dtype == "UINT8" else {"mean": (123.675, 116.28, 103.53),
                                              "std": (58.395, 57.12, 57.375)}
    spec = TensorSpec((5, 3), dtype=dtype, layout=layout, **normalised)
    protocol = v2(instance_format="tensor", tensor=spec, binary=binary).with_model("x", ())
    rng = np.random.default_rng(7)
    for count in (1, 2, 7):
        tensors = [to_tensor(Image.fromarray(rng.integers(0, 256, (3, 5, 3), dtype=np.uint8)),
                             spec) for _ in range(count)]
        instances = [protocol.instance("k", b"", "", t) for t in tensors]
        body, headers = protocol.request(instances)
        assert protocol.body_size([len(i) for i in instances]) == len(body)
        if binary:  # exactly the tensors' bytes after the JSON header
            assert len(body) - int(headers[HEADER_LENGTH]) == count * spec.nbytes
            assert spec.nbytes == 5 * 3 * 3 * {"UINT8": 1, "FP16": 2, "FP32": 4}[dtype]
        else:  # the JSON numbers give back the same values of that dtype
            data = np.array(json.loads(body)["inputs"][0]["data"]).astype(tensors[0].dtype)
            assert np.array_equal(data, np.concatenate([t.ravel() for t in tensors]))
