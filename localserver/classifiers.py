"""The image classifiers the local server can serve, behind one small interface.

A classifier has ``name``, ``labels``, ``embedding_size`` (None when it has no embedding) and
three methods:

* ``classify(images)``: Pillow images -> one ``[(label, score), ...]`` list per image, best first;
* ``predict(blobs)``: encoded image bytes -> the same; an undecodable image raises
  :class:`BadImage` naming its index, so a server can fail that request and a client can
  isolate the image;
* ``infer(images, embed)``: an :class:`Inference`, the ranked labels and, with ``embed``, each
  image's embedding (a float32 numpy array ``[n, embedding_size]``) from the same model run.

:class:`ColourClassifier` is the deterministic colour model of :mod:`localserver.model`.
:class:`OnnxClassifier` runs any ONNX image classifier on the CPU with ``onnxruntime``
(an optional dependency: the ``model`` extra); :func:`load_classifier` builds either from the
server's ``--model`` flag. EfficientNet-Lite0 (ImageNet-1k) ships in ``localserver/models/``;
its graph's second output, ``embedding``, is the pooled 1,280-float feature vector.
"""
import dataclasses
import math
import os
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

from PIL import Image

from localserver import model
from localserver.model import decode_image  # noqa: F401  (the servers' decoder)

Prediction = List[Tuple[str, float]]

MODELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")
COLOUR_MODEL = "colour"
EFFICIENTNET_LITE0 = "efficientnet_lite0"
BUILTIN_ONNX = {
    EFFICIENTNET_LITE0: (os.path.join(MODELS_DIR, "efficientnet_lite0.onnx"),
                         os.path.join(MODELS_DIR, "imagenet_labels.txt")),
}
#: The ONNX graph output read as the image's embedding, when a model has one.
EMBEDDING_OUTPUT = "embedding"


class Inference(NamedTuple):
    """One model run over a batch: ranked labels per image, and the embeddings when asked."""

    ranked: List[Prediction]
    embeddings: Optional[Any] = None  # float32 numpy array [n, embedding_size]


class BadImage(ValueError):
    """Image ``index`` of a batch cannot be classified; ``reason`` says why."""

    def __init__(self, index: int, reason: str):
        super().__init__(reason)
        self.index = index
        self.reason = reason


def decode_all(blobs: Sequence[bytes]) -> List[Image.Image]:
    """Decode every image; the first bad one raises :class:`BadImage` with its index."""
    images = []
    for index, data in enumerate(blobs):
        try:
            images.append(decode_image(data))
        except ValueError as exc:
            raise BadImage(index, str(exc)) from None
    return images


class ColourClassifier:
    """The deterministic colour model: eight colour labels, all returned."""

    name = "local-color-classifier"
    labels = model.LABELS
    embedding_size = None

    def classify(self, images: Sequence[Image.Image]) -> List[Prediction]:
        return [model.classify_image(img) for img in images]

    def infer(self, images: Sequence[Image.Image], embed: bool = False) -> Inference:
        if embed:
            raise ValueError(f"the {self.name} has no embedding")
        return Inference(self.classify(images))

    def predict(self, blobs: Sequence[bytes]) -> List[Prediction]:
        return self.classify(decode_all(blobs))


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input tensor.

    The image (RGB, alpha over white) is resized (bicubic, aspect kept) so that it covers
    ``width / crop_fraction`` x ``height / crop_fraction`` (rounded down), and its centre
    ``width`` x ``height`` is kept: torchvision's ``Resize(256)`` + ``CenterCrop(224)`` at
    224 and 0.875. Then each channel is mapped to ``(pixel - mean) / std`` (pixels 0..255),
    laid out as ``nchw`` or ``nhwc`` float32. The defaults are EfficientNet-Lite's own
    (the centre 224/256 of the image, mean 127, std 128).
    """

    height: int = 224
    width: int = 224
    crop_fraction: float = 224 / 256
    mean: Tuple[float, float, float] = (127.0, 127.0, 127.0)
    std: Tuple[float, float, float] = (128.0, 128.0, 128.0)
    layout: str = "nchw"

    def validate(self) -> None:
        if self.height < 1 or self.width < 1:
            raise ValueError("input size must be positive")
        if not 0 < self.crop_fraction <= 1:
            raise ValueError("crop fraction must be in (0, 1]")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need three values, std > 0")
        if self.layout not in ("nchw", "nhwc"):
            raise ValueError("layout must be nchw or nhwc")


def resized_centre(img: Image.Image, width: int, height: int, fraction: float) -> Image.Image:
    """The centre ``width`` x ``height`` of the image scaled to cover ``floor(width /
    fraction)`` x ``floor(height / fraction)``: the side that binds becomes exactly that, the
    other ``int(side * other / binding)``; the crop starts at ``round(excess / 2)``."""
    cover_w, cover_h = math.floor(width / fraction), math.floor(height / fraction)
    if cover_w * img.height >= cover_h * img.width:
        size = cover_w, max(cover_h, int(cover_w * img.height / img.width))
    else:
        size = max(cover_w, int(cover_h * img.width / img.height)), cover_h
    scaled = img.resize(size, Image.Resampling.BICUBIC)
    left, top = int(round((size[0] - width) / 2)), int(round((size[1] - height) / 2))
    return scaled.crop((left, top, left + width, top + height))


def to_tensor(images: Sequence[Image.Image], pre: Preprocessing):
    """A float32 batch tensor of ``images`` as ``pre`` says (numpy imported here)."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    batch = np.empty((len(images), pre.height, pre.width, 3), dtype=np.float32)
    for i, img in enumerate(images):
        centre = resized_centre(model.to_rgb(img), pre.width, pre.height, pre.crop_fraction)
        batch[i] = np.asarray(centre, dtype=np.float32)
    batch = (batch - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return batch.transpose(0, 3, 1, 2).copy() if pre.layout == "nchw" else batch


def softmax_rows(scores):
    """Row-wise softmax unless every row already is a probability vector."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    scores = scores.astype(np.float64)
    sums = scores.sum(axis=1)
    if scores.min() >= 0 and np.allclose(sums, 1.0, atol=1e-3):
        return scores
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def read_labels(path: str) -> Tuple[str, ...]:
    """One label per line (blank lines and ``#`` comments ignored)."""
    with open(path, encoding="utf-8") as f:
        labels = tuple(line.strip() for line in f
                       if line.strip() and not line.lstrip().startswith("#"))
    if not labels:
        raise ValueError(f"{path}: no labels")
    return labels


class OnnxClassifier:
    """An ONNX image classifier: one image input; the first output other than ``embedding``
    is the ``[n, classes]`` scores, and an output named ``embedding`` (``[n, d]``), if the
    graph has one, the image's embedding."""

    def __init__(self, path: str, labels: Sequence[str], pre: Preprocessing = Preprocessing(),
                 top_k: int = 5, name: Optional[str] = None, threads: int = 0):
        import onnxruntime  # pylint: disable=import-outside-toplevel
        pre.validate()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        self._session = onnxruntime.InferenceSession(
            path, options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self.labels = tuple(labels)
        self.pre = pre
        self.top_k = top_k
        self.name = name or os.path.splitext(os.path.basename(path))[0]
        outputs = self._session.get_outputs()
        scores = [o for o in outputs if o.name != EMBEDDING_OUTPUT]
        if not scores:
            raise ValueError(f"{path} has no score output")
        self._scores = scores[0].name
        classes = scores[0].shape[-1]
        if isinstance(classes, int) and classes != len(self.labels):
            raise ValueError(f"{path} has {classes} classes but {len(self.labels)} labels "
                             "were given")
        self.embedding_size = embedding_size(outputs, path)

    def classify(self, images: Sequence[Image.Image]) -> List[Prediction]:
        return self.infer(images).ranked

    def infer(self, images: Sequence[Image.Image], embed: bool = False) -> Inference:
        import numpy as np  # pylint: disable=import-outside-toplevel
        if embed and self.embedding_size is None:
            raise ValueError(f"{self.name} has no {EMBEDDING_OUTPUT!r} output")
        if not images:
            return Inference([], np.zeros((0, self.embedding_size), np.float32) if embed
                             else None)
        names = [self._scores, EMBEDDING_OUTPUT] if embed else [self._scores]
        got = self._session.run(names, {self._input: to_tensor(images, self.pre)})
        ranked = [self._ranked(row) for row in softmax_rows(got[0].reshape(len(images), -1))]
        return Inference(ranked, np.asarray(got[1], np.float32) if embed else None)

    def predict(self, blobs: Sequence[bytes]) -> List[Prediction]:
        return self.classify(decode_all(blobs))

    def _ranked(self, row) -> Prediction:
        order = row.argsort()[::-1]
        if self.top_k:
            order = order[:self.top_k]
        return [(self.labels[i], float(row[i])) for i in order]


def embedding_size(outputs, path: str) -> Optional[int]:
    """The width of the graph output named ``embedding`` (``[n, d]``), None without one."""
    for output in outputs:
        if output.name == EMBEDDING_OUTPUT:
            width = output.shape[-1] if len(output.shape) == 2 else None
            if not isinstance(width, int) or width < 1:
                raise ValueError(f"{path}: output {EMBEDDING_OUTPUT!r} must be [n, d], "
                                 f"not {output.shape}")
            return width
    return None


def load_classifier(name: str = COLOUR_MODEL, labels: Optional[str] = None,
                    pre: Preprocessing = Preprocessing(), top_k: int = 5):
    """The classifier for the server's ``--model``: ``colour``, ``efficientnet_lite0`` or a
    path to an ``.onnx`` file (then ``labels`` names its labels file)."""
    if name == COLOUR_MODEL:
        return ColourClassifier()
    if name in BUILTIN_ONNX:
        path, default_labels = BUILTIN_ONNX[name]
        return OnnxClassifier(path, read_labels(labels or default_labels), pre, top_k, name)
    if not os.path.isfile(name) and name.lower().endswith(".onnx"):
        raise ValueError(f"--model {name}: no such file (from the folder {os.getcwd()})")
    if not os.path.isfile(name):
        raise ValueError(f"--model {name}: expected {COLOUR_MODEL}, "
                         f"{', '.join(BUILTIN_ONNX)} or an .onnx file")
    if not labels:
        raise ValueError(f"--model {name}: --labels FILE is needed for an ONNX file")
    return OnnxClassifier(name, read_labels(labels), pre, top_k)


def parse_triple(text: str) -> Tuple[float, float, float]:
    """``"127"`` or ``"123.7,116.3,103.5"`` -> three floats (one per RGB channel)."""
    values = tuple(float(v) for v in text.split(","))
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise ValueError(f"expected one or three comma-separated numbers, got {text!r}")
    return values


def parse_input_size(text: str) -> Tuple[int, int]:
    """``"224"`` or ``"240x320"`` (height x width) -> (height, width)."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"--input_size: expected N or HxW, got {text!r}")
    sizes = [int(p) for p in parts]
    return (sizes[0], sizes[-1])


MODEL_FLAGS = ("model", "labels", "input_size", "crop_fraction", "mean", "std", "layout",
               "top_k")


def add_model_flags(parser) -> None:
    """The server's model flags; the defaults are EfficientNet-Lite0's preprocessing."""
    pre = Preprocessing()
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=COLOUR_MODEL,
                       help=f"{COLOUR_MODEL}, {', '.join(BUILTIN_ONNX)} or a path to an ONNX "
                            "image classifier (default: %(default)s)")
    group.add_argument("--labels", default=None,
                       help="label file for an ONNX --model, one name per line in class order")
    group.add_argument("--input_size", default=str(pre.height),
                       help="model input N or HxW in pixels (default: %(default)s)")
    group.add_argument("--crop_fraction", type=float, default=pre.crop_fraction,
                       help="the centre share kept after resizing (default: "
                            "%(default).4f = 224/256: the shorter side becomes 256, the "
                            "centre 224 is kept)")
    group.add_argument("--mean", default="127",
                       help="per-channel mean subtracted from 0..255 pixels, one or three "
                            "numbers (default: %(default)s)")
    group.add_argument("--std", default="128",
                       help="per-channel divisor after the mean, one or three numbers "
                            "(default: %(default)s)")
    group.add_argument("--layout", default=pre.layout, choices=("nchw", "nhwc"),
                       help="input tensor layout (default: %(default)s)")
    group.add_argument("--top_k", type=int, default=5,
                       help="labels returned per image by an ONNX model; 0 = all "
                            "(default: %(default)s)")


def classifier_from_flags(args: dict):
    """Pop the model flags from parsed ``args`` and load that classifier."""
    flags = {name: args.pop(name) for name in MODEL_FLAGS}
    height, width = parse_input_size(flags["input_size"])
    pre = Preprocessing(height=height, width=width, crop_fraction=flags["crop_fraction"],
                        mean=parse_triple(flags["mean"]), std=parse_triple(flags["std"]),
                        layout=flags["layout"])
    if flags["top_k"] < 0:
        raise ValueError("--top_k must be >= 0")
    return load_classifier(flags["model"], flags["labels"], pre, flags["top_k"])
