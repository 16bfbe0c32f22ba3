"""Make an ONNX image classifier's pooled features a second graph output, `embedding`.

    python scripts/add_embedding_output.py localserver/models/efficientnet_lite0.onnx

The classifier head is the `Gemm` that computes the graph's first output (EfficientNet-Lite0:
`logits = pooled @ W.T + b`); its input `A` is the global-average-pooled, flattened feature
vector (1,280 floats for Lite0). One `Identity` node copies that tensor to a new output named
`embedding`, shaped `[batch, width]`; nothing else in the file changes, so the result is
deterministic and differs from its input by those few bytes. Running it again on its own
output changes nothing. It then checks, on random input with onnx's reference evaluator, that
the first output equals `embedding @ W.T + b` (the largest difference is printed).

Needs only the `onnx` package (and numpy); the export script calls it after torch's export.
"""
import os
import sys
from typing import Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

EMBEDDING = "embedding"
NODE_NAME = "/embedding/Identity"
CHECK_TOLERANCE = 1e-4


def head(graph: onnx.GraphProto) -> onnx.NodeProto:
    """The Gemm node that computes the graph's first output."""
    first = graph.output[0].name
    for node in graph.node:
        if first in node.output:
            if node.op_type != "Gemm":
                raise ValueError(f"the first output {first!r} comes from a {node.op_type}, "
                                 "not the Gemm of a classifier head")
            return node
    raise ValueError(f"no node computes the first output {first!r}")


def head_weights(graph: onnx.GraphProto, gemm: onnx.NodeProto) -> Tuple[np.ndarray, np.ndarray]:
    """The head's W as ``[classes, width]`` and its bias."""
    initializers = {t.name: t for t in graph.initializer}
    weight = numpy_helper.to_array(initializers[gemm.input[1]])
    bias = numpy_helper.to_array(initializers[gemm.input[2]])
    attributes = {a.name: helper.get_attribute_value(a) for a in gemm.attribute}
    return (weight if attributes.get("transB", 0) else weight.T), bias


def with_embedding_output(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with the head's input also a graph output named ``embedding`` (a copy; the
    model itself when it already has that output)."""
    if any(o.name == EMBEDDING for o in model.graph.output):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    gemm = head(graph)
    weight, _ = head_weights(graph, gemm)
    batch = graph.output[0].type.tensor_type.shape.dim[0].dim_param or "batch"
    graph.node.append(helper.make_node("Identity", [gemm.input[0]], [EMBEDDING],
                                       name=NODE_NAME))
    graph.output.append(helper.make_tensor_value_info(
        EMBEDDING, onnx.TensorProto.FLOAT, [batch, int(weight.shape[1])]))
    return out


def check(model: onnx.ModelProto) -> float:
    """Largest difference between the first output and ``embedding @ W.T + b``."""
    from onnx.reference import ReferenceEvaluator  # pylint: disable=import-outside-toplevel
    onnx.checker.check_model(model)
    graph = model.graph
    weight, bias = head_weights(graph, head(graph))
    shape = [d.dim_value or 1 for d in graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    scores, embedding = ReferenceEvaluator(model).run(
        [graph.output[0].name, EMBEDDING], {graph.input[0].name: x})
    return float(np.abs(embedding @ weight.T + bias - scores).max())


def add_embedding_output(path: str) -> float:
    """Rewrite the ONNX file at ``path`` with the ``embedding`` output; the check's figure."""
    model = with_embedding_output(onnx.load(path))
    difference = check(model)
    if difference > CHECK_TOLERANCE:
        raise SystemExit(f"{path}: the first output is not the head applied to the embedding "
                         f"(difference {difference:.2e})")
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return difference


def main(argv) -> int:
    if len(argv) != 1:
        print("usage: python scripts/add_embedding_output.py MODEL.onnx", file=sys.stderr)
        return 2
    difference = add_embedding_output(argv[0])
    print(f"add_embedding_output: {argv[0]} ({os.path.getsize(argv[0]):,} bytes) has the "
          f"output {EMBEDDING!r}; largest difference of logits from embedding @ W.T + b "
          f"{difference:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
