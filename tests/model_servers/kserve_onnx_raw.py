"""EfficientNet-Lite0 (localserver/models/efficientnet_lite0.onnx) as a KServe custom model that
runs the graph on the tensor exactly as received, with no server-side preprocessing:
    python tests/model_servers/kserve_onnx_raw.py --model_name efficientnet_lite0 --http_port PORT
run by the kserve virtualenv's python (tests/servers.py), with this folder on PYTHONPATH.

v2 `POST /v2/models/NAME/infer` with one FP32 input `image` [n, 3, 224, 224] (NCHW, already
resized, cropped and normalised by the client), in JSON or binary; answers `scores` (FP32
[n, 1000], the softmax of the graph's logits, ImageNet class order), and with `--embeddings`
the graph's `embedding` output too (FP32 [n, 1280]). `GET /v2/models/NAME`
gives those shapes. Another datatype or shape (an NHWC tensor, say) fails the request with
InvalidInput (HTTP 400, `{"error": ...}`).
"""
import argparse
import uuid

from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve.errors import InvalidInput

from onnx_raw import EFFICIENTNET_LITE0, MODEL_NAME, RawClassifier


class OnnxRaw(Model):
    def __init__(self, name: str, path: str, embeddings: bool = False):
        super().__init__(name)
        self.classifier = RawClassifier(path, embeddings=embeddings)
        self.ready = True

    def get_input_types(self):
        return [self.classifier.input.metadata()]

    def get_output_types(self):
        return [output.metadata() for output in self.classifier.outputs]

    async def predict(self, payload, headers=None, response_headers=None):
        if not isinstance(payload, InferRequest):
            raise InvalidInput("this model speaks v2 only: POST /v2/models/NAME/infer")
        if len(payload.inputs) != 1:
            raise InvalidInput(f"expected one input, got {len(payload.inputs)}")
        tensor = payload.inputs[0]
        try:
            self.classifier.check(tensor.name, tensor.datatype, tensor.shape)
            answer = self.classifier.answer(tensor.as_numpy())
        except ValueError as e:
            raise InvalidInput(str(e))
        outputs = []
        for meta in self.classifier.outputs:
            values = answer[meta.name]
            output = InferOutput(meta.name, list(values.shape), meta.datatype)
            output.set_data_from_numpy(values, binary_data=False)
            outputs.append(output)
        return InferResponse(payload.id or str(uuid.uuid4()), self.name, outputs,
                             use_binary_outputs=payload.use_binary_outputs,
                             requested_outputs=payload.request_outputs)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--model_name", default=MODEL_NAME)
    parser.add_argument("--model_path", default=EFFICIENTNET_LITE0)
    parser.add_argument("--embeddings", action="store_true")
    known, _ = parser.parse_known_args()  # --http_port etc. are KServe's own flags
    ModelServer(enable_grpc=False, workers=1).start([OnnxRaw(known.model_name,
                                                              known.model_path,
                                                              known.embeddings)])
