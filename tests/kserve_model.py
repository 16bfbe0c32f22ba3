"""A KServe model for the tests, run by the kserve virtualenv's python (tests/servers.py):
    python tests/kserve_model.py --model_name colours --http_port PORT
It answers KServe v1 `{"instances": [{"b64": ...}]}` with the dominant colour channel of each
image, and raises on an image it cannot decode (a truncated JPEG), which KServe answers with
HTTP 500 for the whole request, as real models do.
"""
import argparse
import base64
import io

from kserve import Model, ModelServer
from PIL import Image

CHANNELS = ("red", "green", "blue")


class DominantColour(Model):
    def __init__(self, name: str):
        super().__init__(name)
        self.ready = True

    async def predict(self, payload, headers=None, response_headers=None):
        return {"predictions": [dominant(instance) for instance in payload["instances"]]}


def dominant(instance) -> dict:
    image = Image.open(io.BytesIO(base64.b64decode(instance["b64"])))
    image.load()  # raises OSError on a truncated image
    means = image.convert("RGB").resize((1, 1), Image.BOX).getpixel((0, 0))
    total = sum(means) or 1
    scores = [value / total for value in means]
    ranked = sorted(zip(CHANNELS, scores), key=lambda pair: -pair[1])
    return {"labels": [label for label, _ in ranked], "scores": [score for _, score in ranked]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--model_name", default="colours")
    known, _ = parser.parse_known_args()  # --http_port etc. are KServe's own flags
    ModelServer(enable_grpc=False, workers=1).start([DominantColour(known.model_name)])
