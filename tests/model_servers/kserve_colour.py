"""The colour classifier (localserver.model) as a KServe custom model, for the tests:
    python tests/model_servers/kserve_colour.py --model_name colour --http_port PORT
run by the kserve virtualenv's python (tests/servers.py), with the repository on PYTHONPATH.

It speaks what KServe's ModelServer routes to a custom model: v2 `POST /v2/models/NAME/infer`
with one BYTES input `image` of base64 text (KServe 0.21 turns binary BYTES inputs into
UTF-8 text, which image files are not), or `NAME-pixels` with a UINT8 [n, H, W, 3] input
`image` (JSON or binary), answering `labels` (BYTES [n, 8]) and `scores` (FP32 [n, 8]), and v1
`POST /v1/models/NAME:predict` with `{"instances": [{"b64": ...}]}`. An image it cannot
decode fails the whole request with InvalidInput (HTTP 400, `{"error": ...}`), as a model
validating its inputs does.
"""
import argparse
import base64
import binascii
import uuid

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve.errors import InvalidInput

from localserver import model

LABELS = len(model.LABELS)


class Colour(Model):
    """Images as a BYTES tensor of files (`pixels=False`) or a UINT8 [n, H, W, 3] tensor."""

    def __init__(self, name: str, pixels: bool = False):
        super().__init__(name)
        self.pixels = pixels
        self.ready = True

    def get_input_types(self):
        if self.pixels:
            return [{"name": "image", "datatype": "UINT8", "shape": [-1, -1, -1, 3]}]
        return [{"name": "image", "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self):
        return [{"name": "labels", "datatype": "BYTES", "shape": [-1, LABELS]},
                {"name": "scores", "datatype": "FP32", "shape": [-1, LABELS]}]

    async def predict(self, payload, headers=None, response_headers=None):
        if isinstance(payload, InferRequest):
            return self._infer(payload)
        ranked = classify_all([image_bytes(i.get("b64") if isinstance(i, dict) else None)
                               for i in payload["instances"]])
        return {"predictions": [{"labels": [l for l, _ in r], "scores": [s for _, s in r]}
                                for r in ranked]}

    def _infer(self, request: InferRequest) -> InferResponse:
        tensor = request.inputs[0]
        expected = self.get_input_types()[0]["datatype"]
        if tensor.name != "image" or tensor.datatype != expected:
            raise InvalidInput(f"expected {expected} input 'image', got {tensor.datatype} "
                               f"{tensor.name!r}")
        if self.pixels:
            ranked = [model.classify_array(image.tolist()) for image in tensor.as_numpy()]
        else:
            ranked = classify_all([image_bytes(v) for v in tensor.data])
        labels = InferOutput("labels", [len(ranked), LABELS], "BYTES")
        labels.set_data_from_numpy(np.array([[l for l, _ in r] for r in ranked],
                                            dtype=np.object_), binary_data=False)
        scores = InferOutput("scores", [len(ranked), LABELS], "FP32")
        scores.set_data_from_numpy(np.array([[s for _, s in r] for r in ranked],
                                            dtype=np.float32), binary_data=False)
        return InferResponse(request.id or str(uuid.uuid4()), self.name, [labels, scores],
                             use_binary_outputs=request.use_binary_outputs,
                             requested_outputs=request.request_outputs)


def image_bytes(value) -> bytes:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    try:
        return base64.b64decode(value or "", validate=True)
    except (binascii.Error, TypeError, ValueError) as e:
        raise InvalidInput(f"an image is not base64: {e}")


def classify_all(images):
    try:
        return [model.classify_bytes(data) for data in images]
    except ValueError as e:
        raise InvalidInput(f"cannot classify an image: {e}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--model_name", default="colour")
    known, _ = parser.parse_known_args()  # --http_port etc. are KServe's own flags
    ModelServer(enable_grpc=False, workers=1).start(
        [Colour(known.model_name), Colour(known.model_name + "-pixels", pixels=True)])
