"""A small, real, deterministic colour classifier.

The "model" reduces an image to its mean RGB colour and scores that colour
against eight pure-colour prototypes: the closer the mean is to a prototype,
the higher that label's score. Scores are a softmax over negative squared
distances, so every call returns all labels with scores summing to 1.

Everything here is a pure function of the input pixels, so results are
reproducible across runs, processes and machines.
"""

import io
import math
from typing import List, Sequence, Tuple

from PIL import Image, ImageStat, UnidentifiedImageError

LABELS = ("red", "green", "blue", "yellow", "cyan", "magenta", "white", "black")

PROTOTYPES = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}

#: Softmax temperature applied to squared, normalised distances.
TEMPERATURE = 0.05

#: Images are box-filtered down to at most this many pixels per side.
MAX_SIDE = 32

#: Background that transparent pixels are composited over.
BACKGROUND = (255, 255, 255)

Prediction = List[Tuple[str, float]]


def to_rgb(img: Image.Image) -> Image.Image:
    """Return ``img`` as an RGB image, compositing any alpha over white."""
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    )
    if not has_alpha:
        return img.convert("RGB")
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def reduce(img: Image.Image, max_side: int = MAX_SIDE) -> Image.Image:
    """Shrink ``img`` with a box filter so neither side exceeds ``max_side``."""
    width, height = img.size
    if max(width, height) <= max_side:
        return img
    scale = max_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return img.resize(size, Image.Resampling.BOX)


def mean_colour(img: Image.Image) -> Tuple[float, float, float]:
    """Mean (r, g, b) of an RGB image."""
    r, g, b = ImageStat.Stat(img).mean
    return (r, g, b)


def score_colour(mean: Sequence[float]) -> Prediction:
    """Score a mean colour against the prototypes.

    Returns every label with its softmax score, sorted by score descending,
    ties broken by the order of ``LABELS``.
    """
    logits = []
    for label in LABELS:
        distance = math.dist(mean, PROTOTYPES[label]) / 255.0
        logits.append(-(distance * distance) / TEMPERATURE)
    top = max(logits)
    weights = [math.exp(logit - top) for logit in logits]
    total = sum(weights)
    scored = [(label, weight / total) for label, weight in zip(LABELS, weights)]
    order = sorted(range(len(LABELS)), key=lambda i: (-scored[i][1], i))
    return [scored[i] for i in order]


def classify_image(img: Image.Image) -> Prediction:
    """Classify a Pillow image; returns all ``(label, score)`` pairs, best first."""
    if img.width < 1 or img.height < 1:
        raise ValueError("image has no pixels")
    return score_colour(mean_colour(reduce(to_rgb(img))))


def decode_image(data: bytes) -> Image.Image:
    """Decode encoded image bytes (PNG, JPEG, ...) fully; ``ValueError`` with a readable reason
    when the data is empty, not an image, corrupt or truncated."""
    if not data:
        raise ValueError("empty image data")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except UnidentifiedImageError:
        raise ValueError("cannot decode image: not a recognised image format") from None
    # Pillow's decoders raise a zoo of exception types (OSError, SyntaxError, struct.error,
    # DecompressionBombError, ...) for bad input; all of them mean "not a usable image".
    except Exception as exc:  # pylint: disable=broad-except
        raise ValueError(f"cannot decode image: {str(exc) or type(exc).__name__}") from None
    if img.width < 1 or img.height < 1:
        raise ValueError("image has no pixels")
    return img


def classify_bytes(data: bytes) -> Prediction:
    """Decode encoded image bytes fully and classify them."""
    return classify_image(decode_image(data))


def _check_channel(value, where: str) -> int:
    """Validate one channel value (an int 0..255) and return it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where} must be a number, got {type(value).__name__}")
    if not 0 <= value <= 255 or value != int(value):
        raise ValueError(f"{where} must be an integer in 0..255, got {value!r}")
    return int(value)


def array_to_image(rows) -> Image.Image:
    """Build an RGB image from nested lists shaped H x W x 3 of ints 0..255."""
    if not isinstance(rows, (list, tuple)) or not rows:
        raise ValueError("tensor must be a non-empty list of rows (H x W x 3)")
    width = None
    pixels = bytearray()
    for y, row in enumerate(rows):
        if not isinstance(row, (list, tuple)) or not row:
            raise ValueError(f"tensor row {y} must be a non-empty list of pixels")
        if width is None:
            width = len(row)
        elif len(row) != width:
            raise ValueError(
                f"tensor row {y} has {len(row)} pixels, expected {width}"
            )
        for x, pixel in enumerate(row):
            if not isinstance(pixel, (list, tuple)) or len(pixel) != 3:
                raise ValueError(f"tensor pixel [{y}][{x}] must be a list of 3 channels")
            for c, value in enumerate(pixel):
                pixels.append(_check_channel(value, f"tensor value [{y}][{x}][{c}]"))
    return Image.frombytes("RGB", (width, len(rows)), bytes(pixels))


def classify_array(rows) -> Prediction:
    """Classify an RGB tensor given as nested lists (H x W x 3, ints 0..255)."""
    return classify_image(array_to_image(rows))
