"""imaging.tensor against references written here: for real photos and a synthetic portrait
image, every preset, layout, resize mode and resampling filter gives the tensor an
independent numpy computation gives (sizes, crop boxes, padding, normalisation and layout
computed in this file; only the resampling kernel is Pillow's), and `imagenet` + `crop`
gives torchvision's Resize(256) / CenterCrop(224) / ToTensor / Normalize as torchvision
defines them. Also: the JPEG draft path against a full decode of 12 MP photos, tensor byte
sizes, the decode cases (orientation, alpha, greyscale, CMYK, truncation) and the spec's
validation."""
import io
import math
import os
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image, ImageOps

from imaging import tensor
from imaging.tensor import (TensorSpec, decode_for_tensor, geometry, image_tensor, resized,
                            tensor_spec, to_tensor)
from tests.helpers import ROOT
from imaging.decode import ImageError

PHOTOS = os.path.join(ROOT, "localserver", "photos")
PHOTO_NAMES = ("camera.jpg", "cat.jpg", "coffee.jpg", "rocket.jpg")
TOLERANCE = 1e-5

# The published numbers, written out again: (channel order, mean, std), mean and std listed
# per tensor channel in that order.
PUBLISHED = {
    "none": ("RGB", (0, 0, 0), (1, 1, 1)),
    "unit": ("RGB", (0, 0, 0), (255, 255, 255)),
    "inception": ("RGB", (127.5, 127.5, 127.5), (127.5, 127.5, 127.5)),
    "imagenet": ("RGB", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
    "caffe": ("BGR", (103.939, 116.779, 123.68), (1, 1, 1)),  # Keras: B, G, R means
}
FILTERS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
           "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}

# torchvision's ImageNet evaluation transform, as torchvision defines it (0..1 scale).
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)

# A drafted 12 MP JPEG against its full decode, on 0..255 values (measured: at most 3
# levels apart, 0.21-0.23 on average, on the four photos upscaled with noise).
DRAFT_MAX_LEVELS = 4
DRAFT_MEAN_LEVELS = 0.5


def photo(name) -> Image.Image:
    with Image.open(os.path.join(PHOTOS, name)) as img:
        return ImageOps.exif_transpose(img).convert("RGB")


def synthetic(width=301, height=517, seed=7) -> Image.Image:
    """A portrait image (the photos are landscape or square) of gradients, stripes and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // (width - 1), y * 255 // (height - 1),
                       ((x // 7 + y // 5) % 2) * 200 + 20], axis=-1).astype(np.int16)
    pixels += rng.integers(-20, 21, pixels.shape, dtype=np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


IMAGES = {**{name: (lambda name=name: photo(name)) for name in PHOTO_NAMES},
          "synthetic-301x517": synthetic}


def half_even(value: Fraction) -> int:
    """Round to the nearest integer, a half to the even one (Python's `round`, done exactly)."""
    floor = math.floor(value)
    rest = value - floor
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and floor % 2 == 1):
        return floor + 1
    return floor


def reference_pixels(img: Image.Image, size, mode, resample, pad_value=0) -> np.ndarray:
    """(H, W, 3) uint8: the image resized and cropped/padded, geometry computed here."""
    width, height = img.size
    out_w, out_h = size
    kernel = FILTERS[resample]
    if mode in ("fit", "stretch"):
        return np.asarray(img.resize(size, kernel))
    if mode == "crop":
        # cover floor(size / 0.875) with the aspect kept: the binding side exactly, the other
        # truncated; then the centre, offsets rounded half to even (torchvision's round)
        cover_w, cover_h = (math.floor(Fraction(side) / Fraction(7, 8)) for side in size)
        ratio = max(Fraction(cover_w, width), Fraction(cover_h, height))
        if Fraction(cover_w, width) >= Fraction(cover_h, height):
            scaled = cover_w, max(cover_h, math.floor(height * ratio))
        else:
            scaled = max(cover_w, math.floor(width * ratio)), cover_h
        pixels = np.asarray(img.resize(scaled, kernel))
        top = half_even(Fraction(scaled[1] - out_h, 2))
        left = half_even(Fraction(scaled[0] - out_w, 2))
        return pixels[top:top + out_h, left:left + out_w]
    assert mode == "pad"
    # inside the size with the aspect kept, the other side rounded half to even
    if Fraction(width, height) > Fraction(out_w, out_h):
        scaled = out_w, max(1, half_even(Fraction(height * out_w, width)))
    elif Fraction(width, height) < Fraction(out_w, out_h):
        scaled = max(1, half_even(Fraction(width * out_h, height))), out_h
    else:
        scaled = out_w, out_h
    canvas = np.full((out_h, out_w, 3), pad_value, np.uint8)
    top = half_even(Fraction(out_h - scaled[1], 2))
    left = half_even(Fraction(out_w - scaled[0], 2))
    canvas[top:top + scaled[1], left:left + scaled[0]] = np.asarray(img.resize(scaled, kernel))
    return canvas


def reference_tensor(pixels: np.ndarray, preset: str, layout: str) -> np.ndarray:
    order, mean, std = PUBLISHED[preset]
    values = pixels[..., ::-1] if order == "BGR" else pixels
    values = ((values.astype(np.float32) - np.asarray(mean, np.float32))
              / np.asarray(std, np.float32))
    return values.transpose(2, 0, 1) if layout == "NCHW" else values


@pytest.mark.parametrize("resample", list(FILTERS))
@pytest.mark.parametrize("mode", ["fit", "crop", "pad", "stretch"])
@pytest.mark.parametrize("image", list(IMAGES))
def test_every_preset_and_layout_equals_the_reference(image, mode, resample):
    img = IMAGES[image]()
    expected_pixels = reference_pixels(img, (224, 224), mode, resample)
    for preset in PUBLISHED:
        for layout in ("NHWC", "NCHW"):
            spec = tensor_spec((224, 224), normalize=preset, resize=mode, resample=resample,
                               layout=layout, dtype="FP32")
            got = to_tensor(resized(img, spec), spec)
            expected = reference_tensor(expected_pixels, preset, layout)
            assert got.shape == expected.shape and got.dtype == np.float32
            np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE,
                                       err_msg=f"{image} {mode} {resample} {preset} {layout}")


@pytest.mark.parametrize("size", [(200, 150), (150, 200), (97, 61)])
@pytest.mark.parametrize("mode", ["crop", "pad", "stretch"])
@pytest.mark.parametrize("image", ["cat.jpg", "synthetic-301x517"])
def test_non_square_targets_equal_the_reference(image, mode, size):
    img = IMAGES[image]()
    spec = tensor_spec(size, normalize="inception", resize=mode, resample="bilinear",
                       layout="NCHW", dtype="FP32", pad_value=114)
    expected = reference_tensor(reference_pixels(img, size, mode, "bilinear", 114),
                                "inception", "NCHW")
    np.testing.assert_allclose(to_tensor(resized(img, spec), spec), expected, rtol=0,
                               atol=TOLERANCE)


def torchvision_eval(img: Image.Image, resample) -> np.ndarray:
    """transforms.Compose([Resize(256), CenterCrop(224), ToTensor(), Normalize(mean, std)])
    on a PIL image, step by step as torchvision's functional code defines each."""
    size, crop = 256, 224
    w, h = img.size
    if not ((w <= h and w == size) or (h <= w and h == size)):  # Resize(int)
        if w < h:
            img = img.resize((size, int(size * h / w)), resample)
        else:
            img = img.resize((int(size * w / h), size), resample)
    w, h = img.size  # CenterCrop(224)
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    img = img.crop((left, top, left + crop, top + crop))
    chw = np.asarray(img).transpose(2, 0, 1).astype(np.float32) / 255  # ToTensor
    mean = np.asarray(TORCHVISION_MEAN, np.float32)[:, None, None]  # Normalize
    std = np.asarray(TORCHVISION_STD, np.float32)[:, None, None]
    return (chw - mean) / std


@pytest.mark.parametrize("resample", ["bilinear", "bicubic"])
@pytest.mark.parametrize("image", list(IMAGES))
def test_imagenet_crop_is_torchvisions_evaluation_transform(image, resample):
    img = IMAGES[image]()
    spec = tensor_spec((224, 224), normalize="imagenet", resize="crop", crop_fraction=0.875,
                       resample=resample, layout="NCHW", dtype="FP32")
    got = to_tensor(resized(img, spec), spec)
    np.testing.assert_allclose(got, torchvision_eval(img, FILTERS[resample]), rtol=0,
                               atol=TOLERANCE)


@pytest.mark.parametrize("name", PHOTO_NAMES)
def test_decoding_the_photo_bytes_gives_the_same_tensor(name):
    with open(os.path.join(PHOTOS, name), "rb") as f:
        data = f.read()
    spec = tensor_spec((224, 224), normalize="imagenet", resize="crop", resample="bicubic",
                       layout="NCHW", dtype="FP32")
    expected = reference_tensor(reference_pixels(photo(name), (224, 224), "crop", "bicubic"),
                                "imagenet", "NCHW")
    np.testing.assert_allclose(image_tensor(data, spec), expected, rtol=0, atol=TOLERANCE)


def test_fp16_and_uint8_tensors_are_the_reference_in_that_dtype():
    img = photo("coffee.jpg")
    pixels = reference_pixels(img, (224, 224), "crop", "bilinear")
    fp16 = tensor_spec((224, 224), normalize="imagenet", resize="crop", dtype="FP16")
    got = to_tensor(resized(img, fp16), fp16)
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, reference_tensor(pixels, "imagenet", "NHWC")
                                  .astype(np.float16))
    uint8 = tensor_spec((224, 224), resize="crop", dtype="UINT8", layout="NCHW",
                        channel_order="BGR")
    got = to_tensor(resized(img, uint8), uint8)
    assert got.dtype == np.uint8 and got.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(got, pixels[..., ::-1].transpose(2, 0, 1))


@pytest.mark.parametrize("dtype,itemsize", [("FP32", 4), ("FP16", 2), ("UINT8", 1)])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_byte_sizes_are_width_height_channels_itemsize(dtype, itemsize, layout):
    spec = tensor_spec((224, 224), normalize="none", dtype=dtype, layout=layout,
                       resize="crop")
    got = to_tensor(resized(photo("cat.jpg"), spec), spec)
    assert spec.nbytes == got.nbytes == len(got.tobytes()) == itemsize * 224 * 224 * 3
    assert got.shape == spec.shape == ((224, 224, 3) if layout == "NHWC" else (3, 224, 224))


def test_fp32_nchw_224_is_602112_bytes():
    spec = tensor_spec((224, 224), normalize="imagenet", layout="NCHW", dtype="FP32")
    assert spec.nbytes == 4 * 224 * 224 * 3 == 602_112


def twelve_megapixel_jpeg(name, size=(4000, 3000), orientation=1, seed=0) -> bytes:
    """A photo upscaled to 12 MP with noise on top, as a camera's JPEG (quality 90)."""
    rng = np.random.default_rng(seed)
    big = np.asarray(photo(name).resize(size, Image.Resampling.BICUBIC)).astype(np.int16)
    big += rng.normal(0, 6, big.shape).astype(np.int16)
    img = Image.fromarray(np.clip(big, 0, 255).astype(np.uint8), "RGB")
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


def full_decode_tensor(data, spec):
    with Image.open(io.BytesIO(data)) as img:
        upright = ImageOps.exif_transpose(img).convert("RGB")
    return to_tensor(resized(upright, spec), spec)


@pytest.mark.parametrize("name,size,orientation", [
    ("coffee.jpg", (4000, 3000), 1),
    ("rocket.jpg", (4000, 3000), 1),
    ("cat.jpg", (4003, 2999), 6),  # sides not a multiple of 8, and turned by EXIF
    ("camera.jpg", (3001, 4005), 8),
])
def test_a_large_jpeg_is_drafted_and_nearly_the_full_decode(name, size, orientation):
    data = twelve_megapixel_jpeg(name, size, orientation)
    spec = tensor_spec((224, 224), normalize="none", resize="crop", resample="bicubic",
                       layout="NCHW", dtype="FP32")
    with Image.open(io.BytesIO(data)) as img:
        assert tensor.drafted(img, spec) is not None
        assert img.size == (math.ceil(size[0] / 4), math.ceil(size[1] / 4))  # 1/4 scale
    drafted = image_tensor(data, spec)
    full = full_decode_tensor(data, spec)
    difference = np.abs(drafted - full)
    assert 0 < difference.mean() <= DRAFT_MEAN_LEVELS, difference.mean()
    assert difference.max() <= DRAFT_MAX_LEVELS, difference.max()


def test_a_jpeg_near_the_needed_size_is_decoded_in_full():
    spec = tensor_spec((224, 224), resize="crop")
    for side in (640, 1023):  # a 1/2 decode needs 2 x 2 x the 341x256 the crop resizes to
        buf = io.BytesIO()
        photo("coffee.jpg").resize((side, side * 3 // 4)).save(buf, "JPEG")
        with Image.open(io.BytesIO(buf.getvalue())) as img:
            assert tensor.drafted(img, spec) is None
            assert img.size == (side, side * 3 // 4)


@pytest.mark.parametrize("transpose", list(tensor.EXCESS_AFTER))
def test_the_valid_box_follows_the_excess_through_every_transpose(transpose):
    """A stored image whose last column and row lie past the original (red): once
    transposed, the box holds exactly the white pixels."""
    stored = Image.new("RGB", (7, 5), "white")
    for x in range(7):
        stored.putpixel((x, 4), (255, 0, 0))
    for y in range(5):
        stored.putpixel((6, y), (255, 0, 0))
    upright = stored if transpose is None else stored.transpose(transpose)
    left, top, right, bottom = tensor.covered_box(upright.size, (1.0, 1.0), transpose)
    inside = np.asarray(upright)[int(top):int(bottom), int(left):int(right)]
    assert inside.shape[:2] == ((4, 6) if upright.size == (7, 5) else (6, 4))
    assert (inside == 255).all()


def encoded(img: Image.Image, fmt: str, **save_args) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **save_args)
    return buf.getvalue()


def test_decode_turns_by_exif_orientation_before_resizing():
    img = synthetic(120, 80)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: shown rotated 90 degrees clockwise
    data = encoded(img, "PNG", exif=exif.tobytes())
    spec = tensor_spec((50, 50), resize="crop", resample="bilinear")
    upright = img.transpose(Image.Transpose.ROTATE_270)
    np.testing.assert_array_equal(to_tensor(decode_for_tensor(data, spec), spec),
                                  reference_pixels(upright, (50, 50), "crop", "bilinear"))


def test_decode_puts_alpha_over_white_and_converts_greyscale_and_cmyk():
    rgba = Image.new("RGBA", (40, 40), (10, 20, 30, 0))
    spec = tensor_spec((8, 8), resize="stretch", resample="nearest")
    assert (to_tensor(decode_for_tensor(encoded(rgba, "PNG"), spec), spec) == 255).all()
    grey = Image.new("L", (40, 40), 77)
    got = to_tensor(decode_for_tensor(encoded(grey, "JPEG"), spec), spec)
    assert got.shape == (8, 8, 3) and (np.abs(got.astype(int) - 77) <= 1).all()
    cmyk = Image.new("CMYK", (40, 40), (0, 255, 255, 0))  # red
    got = to_tensor(decode_for_tensor(encoded(cmyk, "JPEG"), spec), spec).astype(int)
    assert (got[..., 0] > 240).all() and (got[..., 1:] < 15).all()


def test_a_truncated_jpeg_is_a_decode_error():
    data = encoded(photo("cat.jpg"), "JPEG")
    with pytest.raises(ImageError) as raised:
        decode_for_tensor(data[:len(data) // 2], tensor_spec((224, 224), resize="crop"))
    assert raised.value.stage == "decode"


def test_pad_letterboxes_with_the_pad_value():
    spec = tensor_spec((100, 100), resize="pad", pad_value=114)
    got = to_tensor(resized(Image.new("RGB", (200, 100), (1, 2, 3)), spec), spec)
    assert (got[:25] == 114).all() and (got[75:] == 114).all()
    assert (got[25:75] == (1, 2, 3)).all()
    assert geometry((200, 100), spec) == tensor.Geometry((100, 50), (0, 25))


def test_crop_of_224_resizes_the_shorter_side_to_256():
    spec = tensor_spec((224, 224), resize="crop")
    assert geometry((640, 480), spec) == tensor.Geometry((341, 256), (-58, -16))
    assert geometry((480, 640), spec) == tensor.Geometry((256, 341), (-16, -58))
    assert geometry((500, 500), spec) == tensor.Geometry((256, 256), (-16, -16))
    assert geometry((640, 480), tensor_spec((224, 224), resize="crop", crop_fraction=1.0)) \
        == tensor.Geometry((298, 224), (-37, 0))  # 74 / 2 = 37; 298: int(224 * 4 / 3)


def test_a_tensor_that_is_not_finite_never_leaves():
    spec = tensor_spec((4, 4), dtype="FP32", std=1.0)
    object.__setattr__(spec, "std", (1e-39, 1e-39, 1e-39))  # past the spec's own check
    with pytest.raises(ImageError) as raised:
        to_tensor(Image.new("RGB", (4, 4), "white"), spec)
    assert raised.value.stage == "encode" and "not finite" in str(raised.value)


def test_presets_are_the_published_numbers():
    for name, (order, mean, std) in PUBLISHED.items():
        spec = tensor_spec((1, 1), normalize=name, dtype="FP32")
        assert (spec.channel_order, spec.mean, spec.std) == (order, mean, std), name
    assert set(tensor.PRESETS) == set(PUBLISHED)


def test_a_preset_in_the_other_channel_order_keeps_each_mean_with_its_colour():
    caffe_rgb = tensor_spec((1, 1), normalize="caffe", channel_order="RGB", dtype="FP32")
    assert caffe_rgb.mean == (123.68, 116.779, 103.939)
    imagenet_bgr = tensor_spec((1, 1), normalize="imagenet", channel_order="BGR",
                               dtype="FP32")
    assert imagenet_bgr.mean == (103.53, 116.28, 123.675)
    assert imagenet_bgr.std == (57.375, 57.12, 58.395)


@pytest.mark.parametrize("mean,std,expected", [
    ("127", "128", ((127.0,) * 3, (128.0,) * 3)),
    ("1,2,3", None, ((1.0, 2.0, 3.0), (1.0,) * 3)),
    (None, [1, 2, 4], ((0.0,) * 3, (1.0, 2.0, 4.0))),
    (0.5, 2, ((0.5,) * 3, (2.0,) * 3)),
])
def test_mean_and_std_take_one_or_three_numbers(mean, std, expected):
    spec = tensor_spec((2, 2), mean=mean, std=std, dtype="FP16")
    assert (spec.mean, spec.std) == expected and spec.channel_order == "RGB"


@pytest.mark.parametrize("kwargs,message", [
    ({"normalize": "imagenet", "mean": "1"}, "not both"),
    ({"normalize": "vgg"}, "unknown normalize preset 'vgg'"),
    ({"mean": "1,2"}, "mean must be three finite numbers"),
    ({"std": "a,b,c"}, "std takes one or three"),
    ({"std": "0"}, "std must be positive"),
    ({"mean": "nan"}, "finite"),
    ({"normalize": "unit", "dtype": "UINT8"}, "needs dtype FP16 or FP32"),
    ({"mean": "127", "dtype": "UINT8"}, "needs dtype FP16 or FP32"),
    ({"std": "0.001", "dtype": "FP16"}, "over FP16's largest"),
    ({"std": "1e-37", "dtype": "FP32"}, "over FP32's largest"),
    ({"resize": "cover"}, "resize must be one of fit, crop, pad, stretch"),
    ({"resample": "area"}, "resample must be one of"),
    ({"layout": "CHW"}, "layout must be one of NHWC, NCHW"),
    ({"dtype": "FP64"}, "dtype must be one of UINT8, FP16, FP32"),
    ({"channel_order": "GBR"}, "channel_order must be one of RGB, BGR"),
    ({"crop_fraction": 0}, "crop_fraction"),
    ({"crop_fraction": 1.5}, "crop_fraction"),
    ({"pad_value": 256}, "pad_value"),
    ({"pad_value": 1.5}, "pad_value"),
])
def test_a_bad_spec_is_refused_clearly(kwargs, message):
    fields = {"dtype": "FP32", **kwargs}
    with pytest.raises(ValueError, match=message):
        tensor_spec((224, 224), **fields)


@pytest.mark.parametrize("size", [(0, 224), (224, -1), (224,), (224.0, 224), (True, 1),
                                  (100_000, 100_000)])
def test_a_bad_size_is_refused(size):
    with pytest.raises(ValueError, match="size"):
        TensorSpec(size)


def test_to_tensor_refuses_an_image_of_another_size_or_mode():
    spec = TensorSpec((4, 4))
    with pytest.raises(ValueError, match="RGB image of"):
        to_tensor(Image.new("RGB", (5, 4)), spec)
    with pytest.raises(ValueError, match="RGB image of"):
        to_tensor(Image.new("L", (4, 4)), spec)
