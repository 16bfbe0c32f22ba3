"""imaging.jpeg: the Pillow-free JPEG header read agrees with Pillow whenever it answers."""
import io
import random

import pytest
from PIL import Image

from imaging import jpeg
from localserver.demo import color_image
from imaging.decode import exif_orientation, ImageError, open_image, orientation, prepare


def jpeg_bytes(mode="RGB", size=(40, 30), **save_args) -> bytes:
    img = color_image("blue", size, seed=3)
    img = img.convert(mode) if mode != "RGB" else img
    buf = io.BytesIO()
    img.save(buf, "JPEG", **save_args)
    return buf.getvalue()


def with_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return jpeg_bytes(exif=exif.tobytes())


def icc_profile() -> bytes:
    from PIL import ImageCms
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


VARIANTS = {
    "rgb": lambda: jpeg_bytes(),
    "grey": lambda: jpeg_bytes("L"),
    "cmyk": lambda: jpeg_bytes("CMYK"),
    "progressive": lambda: jpeg_bytes(progressive=True),
    "restart intervals": lambda: jpeg_bytes(restart_marker_blocks=1),
    "comment": lambda: jpeg_bytes(comment=b"a comment"),
    "exif upright": lambda: with_orientation(1),
    "exif rotated": lambda: with_orientation(6),
    "icc profile": lambda: jpeg_bytes(icc_profile=icc_profile()),
    "one pixel": lambda: jpeg_bytes(size=(1, 1)),
}


def pillow_view(data: bytes):
    """What Pillow's header gives prepare(): (size, mode, orientation), or the error."""
    try:
        img = open_image(data)
    except ImageError as e:
        return "error", e.stage
    return img.size, img.mode, orientation(img)


def agrees(data: bytes) -> bool:
    found = jpeg.header(data)
    if found is None:
        return True
    mode = {1: "L", 3: "RGB"}[found.components]
    return pillow_view(data) == ((found.width, found.height), mode,
                                 exif_orientation(found.exif))


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_header_agrees_with_pillow(name):
    assert agrees(VARIANTS[name]())


@pytest.mark.parametrize("name", ["rgb", "grey", "progressive", "restart intervals",
                                  "comment", "exif upright", "exif rotated", "one pixel"])
def test_plain_jpegs_are_read_without_pillow(name):
    data = VARIANTS[name]()
    found = jpeg.header(data)
    assert found is not None
    assert (found.width, found.height) == Image.open(io.BytesIO(data)).size


@pytest.mark.parametrize("name", ["cmyk", "icc profile"])
def test_unusual_jpegs_are_left_to_pillow(name):
    assert jpeg.header(VARIANTS[name]()) is None


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_truncation_agrees_with_pillow(name):
    data = VARIANTS[name]()
    for cut in range(len(data)):
        assert agrees(data[:cut]), cut


@pytest.mark.parametrize("name", ["rgb", "exif rotated", "progressive"])
def test_corrupted_headers_agree_with_pillow(name):
    data = VARIANTS[name]()
    rng = random.Random(7)
    for _ in range(400):
        broken = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            broken[rng.randrange(min(len(data), 700))] = rng.randrange(256)
        assert agrees(bytes(broken)), bytes(broken[:64])


def test_prepare_sends_the_same_bytes_either_way():
    for name, make in VARIANTS.items():
        data = make()
        fast = prepare(data)
        pillow = open_image(data)
        sent_as_is = pillow.mode in ("RGB", "L") and orientation(pillow) == 1
        assert (fast.data == data) == sent_as_is, name
        assert fast.mime_type == "image/jpeg", name


def test_image_size_other_than_the_jpegs_is_not_sent_as_is():
    data = jpeg_bytes(size=(40, 30))
    assert prepare(data, (40, 30)).data == data
    assert prepare(data, (20, 15)).data != data


def test_pixel_limit_is_left_to_pillow(monkeypatch):
    data = jpeg_bytes(size=(40, 30))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert jpeg.header(data) is None
    with pytest.raises(ImageError, match="decompression bomb"):
        prepare(data)
