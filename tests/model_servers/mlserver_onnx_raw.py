"""EfficientNet-Lite0 (localserver/models/efficientnet_lite0.onnx) as an MLServer custom runtime
that runs the graph on the tensor exactly as received, with no server-side preprocessing
(tests/servers.py writes its model-settings.json, with the graph's path as `parameters.uri`,
and runs `mlserver start` from the mlserver virtualenv with this folder on PYTHONPATH).

v2 `POST /v2/models/NAME/infer` with one FP32 input `image` [n, 3, 224, 224] (NCHW, already
resized, cropped and normalised by the client) in JSON; answers `scores` (FP32 [n, 1000], the
softmax of the graph's logits, ImageNet class order), and the graph's `embedding` (FP32
[n, 1280]) when the settings declare it. The metadata is the model settings' `inputs` /
`outputs`, which load() checks against the graph. Another datatype or shape (an
NHWC tensor, say) fails the request with MLServerError (HTTP 400, `{"error": ...}`).
"""
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri

from onnx_raw import RawClassifier, Tensor


def datatype(tensor) -> str:
    return getattr(tensor.datatype, "value", tensor.datatype)


def declared(tensors) -> list:
    return [Tensor(t.name, datatype(t), list(t.shape)) for t in tensors or ()]


class OnnxRawRuntime(MLModel):
    async def load(self) -> bool:
        settings = declared(self.settings.inputs) + declared(self.settings.outputs)
        embeddings = any(t.name == "embedding" for t in settings)
        self.classifier = RawClassifier(await get_model_uri(self.settings),
                                        embeddings=embeddings)
        graph = [self.classifier.input, *self.classifier.outputs]
        if settings != graph:
            raise MLServerError(f"model-settings.json declares {settings}; the graph has "
                                f"{graph}")
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        if len(payload.inputs) != 1:
            raise MLServerError(f"expected one input, got {len(payload.inputs)}")
        tensor = payload.inputs[0]
        try:
            self.classifier.check(tensor.name, datatype(tensor), tensor.shape)
            answer = self.classifier.answer(NumpyCodec.decode_input(tensor))
        except ValueError as e:
            raise MLServerError(str(e))
        outputs = [NumpyCodec.encode_output(meta.name, answer[meta.name])
                   for meta in self.classifier.outputs]
        return InferenceResponse(model_name=self.name, id=payload.id, outputs=outputs)
