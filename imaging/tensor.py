"""An image prepared the way a model was trained: resized (fit, crop, pad or stretch), laid
out (NHWC or NCHW), in its channel order and dtype, normalised as `(pixel - mean) / std`.

Beam-free and pure: `decode_for_tensor(data, spec)` gives the resized upright RGB image
(a large JPEG decoded at reduced size with Pillow's DCT scaling first), `to_tensor(img, spec)`
its numpy array. `tensor_spec(...)` builds a validated `TensorSpec` from a normalisation
preset or explicit mean/std.

Geometry follows the definitions models are trained with:
- `crop`: torchvision's `Resize(s)` then `CenterCrop(size)`, with `s = floor(size /
  crop_fraction)` as timm computes it (224 / 0.875 = 256): the shorter side becomes `s`, the
  longer `int(s * long / short)`; the crop starts at `int(round((scaled - size) / 2))`.
- `pad`: the image inside `size`, aspect kept (Pillow's `ImageOps.contain` rounding), centred
  on a `pad_value` canvas at `round((size - scaled) / 2)` as Pillow's `ImageOps.pad`.
- `stretch`: exactly `size`, aspect ignored.
- `fit`: today's tensor instances: exactly `size` (a tensor has one shape; for encoded
  images `fit` means inside `size`, `imaging.decode.normalised`).
Resampling is Pillow's `Image.resize` with its antialiasing filters.
"""
import functools
import math
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from core.records import Stage
from imaging import jpeg
from imaging.decode import ImageError, normalised, open_image, ORIENTATION_TAG

RESIZE_MODES = ("fit", "crop", "pad", "stretch")
RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
LAYOUTS = ("NHWC", "NCHW")
DTYPES = {"UINT8": np.dtype(np.uint8), "FP16": np.dtype(np.float16),
          "FP32": np.dtype(np.float32)}
CHANNEL_ORDERS = ("RGB", "BGR")

# A JPEG is decoded at 1/2, 1/4 or 1/8 scale when that still leaves this many times the
# pixels the exact resize needs on each side (Pillow's own `thumbnail` keeps 2.0).
DRAFT_MARGIN = 2.0

Channels = Tuple[float, float, float]
_TABLE_ROWS = np.array([0, 256, 512], np.uint16)  # where each channel's row starts


class Preset(NamedTuple):
    """A published normalisation: mean and std per channel, listed in `channel_order`."""
    mean: Channels
    std: Channels
    channel_order: str = "RGB"


PRESETS = {
    "none": Preset((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "unit": Preset((0.0, 0.0, 0.0), (255.0, 255.0, 255.0)),
    "inception": Preset((127.5, 127.5, 127.5), (127.5, 127.5, 127.5)),
    "imagenet": Preset((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
    # Keras' imagenet_utils 'caffe' mode: RGB -> BGR, then B, G, R minus these means.
    "caffe": Preset((103.939, 116.779, 123.68), (1.0, 1.0, 1.0), "BGR"),
}


@dataclass(frozen=True)
class TensorSpec:
    """How one image becomes one tensor. `size` is (width, height); `mean` and `std` are
    per channel of the tensor (in `channel_order`), on 0..255 pixel values."""
    size: Tuple[int, int]
    resize: str = "fit"
    crop_fraction: float = 0.875
    pad_value: int = 0
    resample: str = "bilinear"
    layout: str = "NHWC"
    dtype: str = "UINT8"
    channel_order: str = "RGB"
    mean: Channels = (0.0, 0.0, 0.0)
    std: Channels = (1.0, 1.0, 1.0)

    def __post_init__(self):
        object.__setattr__(self, "size", _size(self.size))
        _one_of("resize", self.resize, RESIZE_MODES)
        _one_of("resample", self.resample, RESAMPLING)
        _one_of("layout", self.layout, LAYOUTS)
        _one_of("dtype", self.dtype, DTYPES)
        _one_of("channel_order", self.channel_order, CHANNEL_ORDERS)
        if (isinstance(self.crop_fraction, bool)
                or not isinstance(self.crop_fraction, (int, float))
                or not 0 < self.crop_fraction <= 1):
            raise ValueError(f"crop_fraction must be a number in (0, 1], not "
                             f"{self.crop_fraction!r}")
        if (isinstance(self.pad_value, bool) or not isinstance(self.pad_value, int)
                or not 0 <= self.pad_value <= 255):
            raise ValueError(f"pad_value must be a whole number in 0..255 (a pixel value), "
                             f"not {self.pad_value!r}")
        object.__setattr__(self, "mean", _three("mean", self.mean))
        object.__setattr__(self, "std", _three("std", self.std))
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive for every channel, not {self.std}")
        if self.dtype == "UINT8" and self.normalises:
            raise ValueError(f"a mean {self.mean} / std {self.std} needs dtype FP16 or FP32: "
                             f"UINT8 holds only the 0..255 pixels")
        reach = max(abs(p - m) / s for m, s in zip(self.mean, self.std) for p in (0, 255))
        largest = float(np.finfo(DTYPES[self.dtype]).max) if self.dtype != "UINT8" else 255
        if reach > largest:
            raise ValueError(f"mean {self.mean} / std {self.std} give values up to {reach:g}, "
                             f"over {self.dtype}'s largest ({largest:g})")

    @property
    def normalises(self) -> bool:
        return self.mean != (0.0, 0.0, 0.0) or self.std != (1.0, 1.0, 1.0)

    @property
    def shape(self) -> Tuple[int, int, int]:
        """One image's tensor shape: (H, W, 3) for NHWC, (3, H, W) for NCHW."""
        width, height = self.size
        return (height, width, 3) if self.layout == "NHWC" else (3, height, width)

    @property
    def nbytes(self) -> int:
        """One image's tensor in bytes (width x height x 3 x the dtype's size)."""
        width, height = self.size
        return width * height * 3 * DTYPES[self.dtype].itemsize


def tensor_spec(size: Tuple[int, int], normalize: Optional[str] = None,
                mean: Union[None, str, float, Sequence[float]] = None,
                std: Union[None, str, float, Sequence[float]] = None,
                channel_order: Optional[str] = None, **fields) -> TensorSpec:
    """A TensorSpec from a preset name (`PRESETS`) or an explicit mean and/or std (one or
    three numbers, or text such as "127.5" or "123.675,116.28,103.53"), not both. With no
    `channel_order` the preset's applies (BGR for caffe, else RGB); a preset asked for in the
    other order has its values reversed, so each mean stays with its colour. `fields` are
    TensorSpec's other fields (resize, crop_fraction, pad_value, resample, layout, dtype)."""
    if normalize is not None and (mean is not None or std is not None):
        raise ValueError("give a normalize preset or a mean/std, not both")
    if mean is not None or std is not None:
        return TensorSpec(size, channel_order=channel_order or "RGB",
                          mean=channel_values("mean", 0.0 if mean is None else mean),
                          std=channel_values("std", 1.0 if std is None else std), **fields)
    preset = PRESETS.get(normalize or "none")
    if preset is None:
        raise ValueError(f"unknown normalize preset {normalize!r}: one of "
                         f"{', '.join(PRESETS)}")
    order = channel_order or preset.channel_order
    if order == preset.channel_order:
        values = preset.mean, preset.std
    else:
        values = preset.mean[::-1], preset.std[::-1]
    return TensorSpec(size, channel_order=order, mean=values[0], std=values[1], **fields)


def channel_values(name: str, value: Union[str, float, Sequence[float]]) -> Channels:
    """One or three numbers (a number, a sequence, or comma-separated text) as three."""
    if isinstance(value, str):
        try:
            value = [float(part) for part in value.split(",")]
        except ValueError:
            raise ValueError(f"{name} takes one or three comma-separated numbers, not "
                             f"{value!r}")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    values = list(value)
    if len(values) == 1:
        values = values * 3
    return _three(name, values)


class Geometry(NamedTuple):
    """The whole image is resized to `scaled`, then placed on the output canvas with its
    top-left corner at `offset`: negative when cropped, positive when padded."""
    scaled: Tuple[int, int]
    offset: Tuple[int, int]


def geometry(source: Tuple[int, int], spec: TensorSpec) -> Geometry:
    """Where an upright image of `source` (width, height) lands for `spec`."""
    width, height = source
    out_w, out_h = spec.size
    if spec.resize == "crop":
        short_w = math.floor(out_w / spec.crop_fraction)
        short_h = math.floor(out_h / spec.crop_fraction)
        if short_w * height >= short_h * width:  # width binds: it becomes short_w exactly
            scaled = short_w, max(short_h, int(short_w * height / width))
        else:
            scaled = max(short_w, int(short_h * width / height)), short_h
        return Geometry(scaled, (-int(round((scaled[0] - out_w) / 2)),
                                 -int(round((scaled[1] - out_h) / 2))))
    if spec.resize == "pad":
        if width * out_h > out_w * height:
            scaled = out_w, max(1, round(height / width * out_w))
        elif width * out_h < out_w * height:
            scaled = max(1, round(width / height * out_h)), out_h
        else:
            scaled = out_w, out_h
        return Geometry(scaled, (round((out_w - scaled[0]) / 2),
                                 round((out_h - scaled[1]) / 2)))
    return Geometry((out_w, out_h), (0, 0))


def resized(img: Image.Image, spec: TensorSpec) -> Image.Image:
    """An upright RGB image (as `imaging.decode.normalised` gives) at `spec.size`."""
    return _placed(img, geometry(img.size, spec), spec, None)


def to_tensor(img: Image.Image, spec: TensorSpec) -> np.ndarray:
    """The image's tensor, `spec.shape` of `spec.dtype`: channels in `spec.channel_order`,
    `(pixel - mean) / std` computed in float32. ImageError(stage='encode') if not finite."""
    if img.mode != "RGB" or img.size != spec.size:
        raise ValueError(f"to_tensor takes an RGB image of {spec.size}, not {img.mode} "
                         f"{img.size} (resize it first)")
    pixels = np.asarray(img)
    if spec.channel_order == "BGR":
        pixels = pixels[..., ::-1]
    if spec.dtype == "UINT8":
        return np.ascontiguousarray(pixels.transpose(2, 0, 1) if spec.layout == "NCHW"
                                    else pixels)
    table = _lookup(spec.mean, spec.std, spec.dtype)
    # mode="clip": the indices are in range by construction, and numpy then writes `out`
    # directly instead of through a buffer
    if spec.layout == "NCHW":
        tensor = np.empty(spec.shape, DTYPES[spec.dtype])
        for channel in range(3):
            np.take(table[channel], pixels[:, :, channel], out=tensor[channel], mode="clip")
    else:
        rows = np.add(pixels, _TABLE_ROWS, dtype=np.uint16)  # channel c reads row c
        tensor = table.ravel().take(rows, mode="clip")
    if not np.isfinite(tensor).all():
        raise ImageError(Stage.ENCODE, f"the tensor holds values that are not finite "
                                   f"(mean {spec.mean}, std {spec.std}, {spec.dtype})")
    return tensor


def decode_for_tensor(data: bytes, spec: TensorSpec) -> Image.Image:
    """The image in `data`, upright RGB (alpha over white) at `spec.size`. A JPEG at least
    2 x DRAFT_MARGIN times larger on each side than the resize needs is decoded at 1/2, 1/4
    or 1/8 scale (DCT scaling), and resized from the area it covers. ImageError(stage=
    'decode') when the bytes are not a readable image."""
    img = open_image(data)
    draft = drafted(img, spec)
    upright = normalised(img, None)
    if draft is None:
        return resized(upright, spec)
    return _placed(upright, draft.where, spec,
                   covered_box(upright.size, draft.excess, draft.transpose))


def image_tensor(data: bytes, spec: TensorSpec) -> np.ndarray:
    """`to_tensor(decode_for_tensor(data, spec), spec)`."""
    return to_tensor(decode_for_tensor(data, spec), spec)


def _placed(img: Image.Image, where: Geometry, spec: TensorSpec,
            box: Optional[Tuple[float, float, float, float]]) -> Image.Image:
    """`img` (its `box`, after a draft) resized and cropped or padded as `where` says."""
    if img.mode != "RGB":
        raise ValueError(f"resized takes an RGB image, not mode {img.mode} "
                         f"(imaging.decode.normalised gives one)")
    scaled = img.resize(where.scaled, RESAMPLING[spec.resample], box=box)
    if where.offset == (0, 0) and where.scaled == spec.size:
        return scaled
    left, top = where.offset
    if spec.resize == "crop":
        return scaled.crop((-left, -top, -left + spec.size[0], -top + spec.size[1]))
    canvas = Image.new("RGB", spec.size, (spec.pad_value,) * 3)
    canvas.paste(scaled, (left, top))
    return canvas


class Draft(NamedTuple):
    """A JPEG set to decode at reduced size, and what resizing it exactly needs."""
    where: Geometry  # computed from the original size
    excess: Tuple[float, float]  # decoded beyond the original's edge, stored frame
    transpose: Optional[Image.Transpose]  # what exif_transpose will apply


def drafted(img: Image.Image, spec: TensorSpec) -> Optional[Draft]:
    """For an opened, not yet decoded image: ask the JPEG decoder for a reduced size that
    keeps DRAFT_MARGIN times what the resize needs on each side; None when the image will be
    decoded at full size."""
    if img.format not in ("JPEG", "MPO"):
        return None
    try:  # the orientation exif_transpose reads (EXIF, or XMP without one)
        transpose = EXIF_TRANSPOSES.get(img.getexif().get(ORIENTATION_TAG, 1))
    except Exception:  # unreadable metadata: decoded at full size; normalised says the rest
        return None
    swapped = EXCESS_AFTER[transpose][0]
    width, height = img.size
    where = geometry((height, width) if swapped else (width, height), spec)
    needed = where.scaled[::-1] if swapped else where.scaled
    reduced = img.draft(None, (math.ceil(needed[0] * DRAFT_MARGIN),
                              math.ceil(needed[1] * DRAFT_MARGIN)))
    if reduced is None or img.size == (width, height):
        return None
    _, (_, _, covered_w, covered_h) = reduced
    return Draft(where, (img.size[0] - covered_w, img.size[1] - covered_h), transpose)


EXIF_TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Where a drafted image's excess (its right column and bottom row, partly past the
# original's edge) lies once transposed: (axes swapped, excess at left, excess at top).
EXCESS_AFTER = {
    None: (False, False, False),
    Image.Transpose.FLIP_LEFT_RIGHT: (False, True, False),
    Image.Transpose.FLIP_TOP_BOTTOM: (False, False, True),
    Image.Transpose.ROTATE_180: (False, True, True),
    Image.Transpose.TRANSPOSE: (True, False, False),
    Image.Transpose.ROTATE_90: (True, False, True),
    Image.Transpose.ROTATE_270: (True, True, False),
    Image.Transpose.TRANSVERSE: (True, True, True),
}


def covered_box(size: Tuple[int, int], excess: Tuple[float, float],
               transpose) -> Tuple[float, float, float, float]:
    """The box of an upright drafted image that covers the original picture."""
    swapped, at_left, at_top = EXCESS_AFTER[transpose]
    excess_w, excess_h = excess[::-1] if swapped else excess
    width, height = size
    left = excess_w if at_left else 0.0
    top = excess_h if at_top else 0.0
    right = width if at_left else width - excess_w
    bottom = height if at_top else height - excess_h
    return left, top, right, bottom


@functools.lru_cache(maxsize=32)
def _lookup(mean: Channels, std: Channels, dtype: str) -> np.ndarray:
    """(3, 256): every pixel value's `(pixel - mean) / std` per tensor channel, computed in
    float32, in `dtype`."""
    pixels = np.arange(256, dtype=np.float32)
    with np.errstate(over="ignore"):  # an overflow is to_tensor's to refuse
        table = ((pixels[None, :] - np.asarray(mean, np.float32)[:, None])
                 / np.asarray(std, np.float32)[:, None])
        return table.astype(DTYPES[dtype])


def _size(size) -> Tuple[int, int]:
    try:
        width, height = size
    except (TypeError, ValueError):
        raise ValueError(f"size must be (width, height), not {size!r}")
    if any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in (width, height)):
        raise ValueError(f"size must be two positive whole numbers, not {size!r}")
    if jpeg.over_pixel_limit(width, height):
        raise ValueError(f"size {width}x{height} is over the {Image.MAX_IMAGE_PIXELS} pixels "
                         f"any image may have (Pillow's MAX_IMAGE_PIXELS)")
    return int(width), int(height)


def _one_of(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")


def _three(name: str, values) -> Channels:
    try:
        numbers = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be three numbers, not {values!r}")
    if len(numbers) != 3 or not all(math.isfinite(v) for v in numbers):
        raise ValueError(f"{name} must be three finite numbers (one per channel), not "
                         f"{values!r}")
    return numbers


class TensorRequest(NamedTuple):
    """The tensor flags as given (None: not given). The layout, size and dtype a model's
    metadata states fill what the flags leave open (`spec`); the rest have their defaults."""
    size: Optional[Tuple[int, int]] = None
    layout: Optional[str] = None
    dtype: Optional[str] = None
    resize: str = "fit"
    crop_fraction: float = 0.875
    pad_value: int = 0
    resample: str = "bilinear"
    channel_order: Optional[str] = None
    normalize: Optional[str] = None
    mean: Optional[str] = None
    std: Optional[str] = None

    @property
    def normalisation_given(self) -> bool:
        return any(v is not None for v in (self.normalize, self.mean, self.std))

    def spec(self, stated: Optional[dict] = None, source: str = "the model") -> TensorSpec:
        """The TensorSpec of these flags, with `stated` {"size", "layout", "dtype"} (what a
        model's metadata says) for those not given; ValueError naming both when a given flag
        contradicts a stated value."""
        stated = {k: v for k, v in (stated or {}).items() if v is not None}
        chosen = {}
        for field, flag, default in (("size", "--image_size", None),
                                     ("layout", "--tensor_layout", "NHWC"),
                                     ("dtype", "--tensor_dtype", "UINT8")):
            given, says = getattr(self, field), stated.get(field)
            if given is not None and says is not None and tuple_or(given) != tuple_or(says):
                raise ValueError(f"{flag} {shown(given)} contradicts {source}, which takes "
                                 f"{shown(says)}")
            chosen[field] = given if given is not None else says if says is not None \
                else default
        if chosen["size"] is None:
            raise ValueError(f"tensor instances need --image_size WxH ({source} does not "
                             f"say its input size)")
        return tensor_spec(chosen["size"], self.normalize, self.mean, self.std,
                           self.channel_order, resize=self.resize,
                           crop_fraction=self.crop_fraction, pad_value=self.pad_value,
                           resample=self.resample, layout=chosen["layout"],
                           dtype=chosen["dtype"])


def tuple_or(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


def shown(value) -> str:
    """A flag value as the user writes it (a size as WxH)."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"{value[0]}x{value[1]}"
    return str(value)


def stated_by_shape(shape, datatype: str) -> dict:
    """{"size", "layout", "dtype"} from a v2 input's metadata `shape` (batch first, -1 for
    any) and `datatype`: [-1, 3, H, W] is NCHW, [-1, H, W, 3] NHWC; -1 sides say no size."""
    stated = {"dtype": datatype if datatype in DTYPES else None}
    dims = [int(d) for d in shape] if isinstance(shape, (list, tuple)) else []
    if len(dims) == 4:
        if dims[1] == 3 and dims[3] != 3:
            stated["layout"], (height, width) = "NCHW", dims[2:4]
        elif dims[3] == 3:
            stated["layout"], (height, width) = "NHWC", dims[1:3]
        else:
            return stated
        if height > 0 and width > 0:
            stated["size"] = (width, height)
    return stated
