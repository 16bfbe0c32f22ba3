"""The colour classifier (localserver.model) as an MLServer custom runtime, for the tests
(tests/servers.py writes its settings and runs `mlserver start` from the mlserver virtualenv,
with the repository and this folder on PYTHONPATH).

v2 `POST /v2/models/NAME/infer` with one BYTES input `image` of base64 text, answering
`labels` (BYTES [n, 8]) and `scores` (FP32 [n, 8]). An image it cannot decode fails the
whole request with MLServerError (HTTP 400, `{"error": ...}`).
"""
import base64
import binascii

from mlserver import MLModel
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput

from localserver import model

LABELS = len(model.LABELS)


class ColourRuntime(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        tensor = payload.inputs[0]
        if tensor.name != "image" or tensor.datatype != "BYTES":
            raise MLServerError(f"expected BYTES input 'image', got {tensor.datatype} "
                                f"{tensor.name!r}")
        ranked = []
        for value in tensor.data:
            try:
                if isinstance(value, bytes):
                    value = value.decode("ascii")
                ranked.append(model.classify_bytes(base64.b64decode(value, validate=True)))
            except (binascii.Error, UnicodeDecodeError, TypeError, ValueError) as e:
                raise MLServerError(f"cannot classify an image: {e}")
        n = len(ranked)
        return InferenceResponse(
            model_name=self.name, id=payload.id,
            outputs=[ResponseOutput(name="labels", shape=[n, LABELS], datatype="BYTES",
                                    data=[l for r in ranked for l, _ in r]),
                     ResponseOutput(name="scores", shape=[n, LABELS], datatype="FP32",
                                    data=[s for r in ranked for _, s in r])])
