"""An ONNX image classifier run on its input tensor exactly as received: no decoding, resizing
or normalisation on the server (the client prepares the tensor). Shared by the KServe and
MLServer raw servers (kserve_onnx_raw.py, mlserver_onnx_raw.py); needs numpy and onnxruntime.

The v2 metadata comes from the graph itself: its first input (float32, symbolic batch as -1,
e.g. EfficientNet-Lite0's `image` [-1, 3, 224, 224], NCHW) and one output `scores`, the
softmax of its first output ([-1, classes]); with `embeddings`, also the graph's own
`embedding` output as it is ([-1, 1280] pooled features). A tensor of another datatype or
shape is refused with a ValueError saying what was expected.
"""
import os
from typing import Dict, List, NamedTuple, Sequence

import numpy as np
import onnxruntime

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EFFICIENTNET_LITE0 = os.path.join(ROOT, "localserver", "models", "efficientnet_lite0.onnx")
MODEL_NAME = "efficientnet_lite0"
DATATYPE = "FP32"
SCORES = "scores"
EMBEDDING = "embedding"


class Tensor(NamedTuple):
    """A v2 tensor's metadata: name, datatype and shape (-1 for a free dimension)."""
    name: str
    datatype: str
    shape: List[int]

    def metadata(self) -> Dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def free_dims(shape: Sequence) -> List[int]:
    """An onnxruntime shape (ints, or names / None for symbolic dimensions) with -1 for those."""
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
    return (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)


class RawClassifier:
    """One ONNX session; `input` and `output` (and `outputs`: every output it answers) are
    its v2 metadata."""

    def __init__(self, path: str = EFFICIENTNET_LITE0, threads: int = 0,
                 embeddings: bool = False):
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(path, options,
                                                    providers=["CPUExecutionProvider"])
        graph_input, graph_output = self.session.get_inputs()[0], self.session.get_outputs()[0]
        if graph_input.type != "tensor(float)":
            raise ValueError(f"{path}: input {graph_input.name!r} is {graph_input.type}, "
                             "not float32")
        self.input = Tensor(graph_input.name, DATATYPE, free_dims(graph_input.shape))
        self.output = Tensor(SCORES, DATATYPE, free_dims(graph_output.shape))
        self.outputs = [self.output]
        if embeddings:
            (vector,) = [o for o in self.session.get_outputs() if o.name == EMBEDDING]
            self.outputs.append(Tensor(EMBEDDING, DATATYPE, free_dims(vector.shape)))

    def check(self, name: str, datatype: str, shape: Sequence[int]) -> None:
        """ValueError unless (name, datatype, shape) is a tensor the graph takes."""
        expected = self.input
        fits = (len(shape) == len(expected.shape)
                and all(want in (-1, got) for want, got in zip(expected.shape, shape))
                and all(isinstance(d, int) and d > 0 for d in shape))
        if name != expected.name or datatype != expected.datatype or not fits:
            raise ValueError(f"expected input {expected.name!r} {expected.datatype} "
                             f"{expected.shape}, got {name!r} {datatype} {list(shape)}")

    def answer(self, tensor: np.ndarray) -> Dict[str, np.ndarray]:
        """Every output's values for `tensor`: `scores`, and `embedding` when it is served."""
        wanted = [self.session.get_outputs()[0].name] + [o.name for o in self.outputs[1:]]
        results = self.session.run(wanted, {self.input.name: tensor.astype(np.float32,
                                                                            copy=False)})
        answer = {SCORES: softmax(results[0].reshape(len(tensor), -1))}
        for output, values in zip(self.outputs[1:], results[1:]):
            answer[output.name] = values.reshape(len(tensor), -1).astype(np.float32)
        return answer

    def scores(self, tensor: np.ndarray) -> np.ndarray:
        """The graph run on `tensor` as it is; softmax of its first output, [n, classes]."""
        logits = self.session.run(None, {self.input.name: tensor.astype(np.float32,
                                                                          copy=False)})[0]
        return softmax(logits.reshape(len(tensor), -1))
