"""Image bytes without Beam: the header parsed (cheap, lazy) to learn format, mode, size and
EXIF orientation; pixels decoded only when the image must change; re-encodings smaller than
a request's budget. Every refusal is an ImageError naming the stage it belongs to."""
import io
import re
import warnings
from typing import Iterator, NamedTuple, Optional, Tuple

from PIL import Image, ImageOps

from core.records import Stage
from imaging import jpeg

# Formats an endpoint takes as they are, with their MIME types.
SENDABLE_FORMATS = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",  # a camera JPEG with extra frames: a JPEG to any decoder
    "PNG": "image/png",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "WEBP": "image/webp",
}


SENDABLE_MODES = ("RGB", "L")


ORIENTATION_TAG = 0x0112


# Re-encoding steps for an image too large for one request: JPEG qualities, then downscales
# by DOWNSCALE_FACTOR, never below MIN_SIDE pixels on the shorter side (or --image_size's
# shorter side, or the image's own): smaller than a model's input, the image is not worth
# predicting, and it goes to the dead letters instead.
JPEG_QUALITIES = (85, 70, 55, 40)


DOWNSCALE_FACTOR = 0.75


MIN_SIDE = 224


# A progressive JPEG is decoded scan by scan: each of its scans can cost a pass over every
# pixel (1.5 ms each at 4000x4000), and a 3 MB file can hold 100,000 of them. Encoders make
# about ten; more than this is refused before any pixel is decoded. A scan starts with the
# SOS marker, which entropy-coded data cannot hold (its 0xFF bytes are stuffed).
SOS_MARKER = b"\xff\xda"


MAX_JPEG_SCANS = 500


class ImageError(ValueError):
    """An input that cannot become an instance; `stage` says where it failed."""

    def __init__(self, stage: Stage, message: str):
        super().__init__(message)
        self.stage = stage


class Prepared(NamedTuple):
    data: bytes
    mime_type: str


def parse_size(text: Optional[str]) -> Optional[Tuple[int, int]]:
    """`"224x224"` -> (224, 224); None stays None."""
    if not text:
        return None
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--image_size must look like WxH (e.g. 224x224), not {text!r}")
    if width <= 0 or height <= 0:
        raise ValueError(f"--image_size must be positive, not {text!r}")
    if jpeg.over_pixel_limit(width, height):
        raise ValueError(f"--image_size {text} is {width * height} pixels, over the "
                         f"{Image.MAX_IMAGE_PIXELS} any image may have (Pillow's "
                         f"MAX_IMAGE_PIXELS)")
    return width, height


QUOTED = re.compile(r"b?'(?:[^'\\]|\\.)*'" "|" r'b?"(?:[^"\\]|\\.)*"')


def without_quoted(message: str) -> str:
    """A decoder's message with what it quotes of the file (`b'...'`, `'...'`) left out:
    a dead letter never carries a file's contents."""
    return QUOTED.sub("<data>", message)


def open_image(data: bytes) -> Image.Image:
    """Parse the image header (no pixels decoded); ImageError(Stage.DECODE) when it is not
    a readable image, declares more pixels than Pillow's MAX_IMAGE_PIXELS, or is a JPEG of
    more than MAX_JPEG_SCANS scans."""
    if not data:
        raise ImageError(Stage.DECODE, "empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageError(Stage.DECODE, f"decompression bomb refused: {e}")
    except Image.UnidentifiedImageError:
        raise ImageError(Stage.DECODE, f"not a recognised image format ({len(data)} bytes)")
    except Exception as e:  # Pillow raises many types for bad headers
        raise ImageError(Stage.DECODE, f"not a readable image: {type(e).__name__}: "
                                   f"{without_quoted(str(e))}")
    width, height = img.size
    if jpeg.over_pixel_limit(width, height):
        raise ImageError(Stage.DECODE, f"decompression bomb refused: {width}x{height} = "
                                   f"{width * height} pixels, over the limit of "
                                   f"{Image.MAX_IMAGE_PIXELS}")
    if img.format in ("JPEG", "MPO"):
        scans = data.count(SOS_MARKER)
        if scans > MAX_JPEG_SCANS:
            raise ImageError(Stage.DECODE, f"decompression bomb refused: a JPEG of {scans} "
                                       f"scans, over the limit of {MAX_JPEG_SCANS}")
    return img


def orientation(img: Image.Image) -> int:
    """The EXIF orientation found in the header (1 when none). `img.getexif()` is not used:
    for PNG it decodes the whole image to look for a late eXIf chunk."""
    return exif_orientation(img.info.get("exif"))


def exif_orientation(raw: Optional[bytes]) -> int:
    """The orientation tag of an EXIF block (1 when there is none)."""
    if not raw:
        return 1
    try:
        exif = Image.Exif()
        exif.load(raw)
        return int(exif.get(ORIENTATION_TAG, 1))
    except Exception:
        return 1


def sendable(fmt: Optional[str], formats: Optional[Tuple[str, ...]] = None) -> bool:
    """Does a model that takes `formats` (None: SENDABLE_FORMATS) take this format as it is?
    (An MPO is a JPEG to any decoder.)"""
    if formats is None:
        return fmt in SENDABLE_FORMATS
    return fmt in formats or (fmt == "MPO" and "JPEG" in formats)


def needs_normalising(img: Image.Image, image_size: Optional[Tuple[int, int]],
                      formats: Optional[Tuple[str, ...]] = None) -> bool:
    return (not sendable(img.format, formats)
            or img.mode not in SENDABLE_MODES
            or orientation(img) != 1
            or (image_size is not None and img.size != image_size))


def normalised(img: Image.Image, image_size: Optional[Tuple[int, int]]):
    """Upright RGB pixels (alpha over white), resized to fit inside `image_size`."""
    try:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            img = img.point(lambda v: v / 256).convert("L")
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            canvas = Image.new("RGB", rgba.size, (255, 255, 255))
            canvas.paste(rgba, mask=rgba.getchannel("A"))
            img = canvas
        elif img.mode != "RGB":
            img = img.convert("RGB")
        if image_size:
            img = ImageOps.contain(img, image_size, Image.Resampling.BILINEAR)
        img.load()
        return img
    except ImageError:
        raise
    except Exception as e:
        raise ImageError(Stage.DECODE, f"cannot decode image: {without_quoted(str(e))}")


def encode_image(img: Image.Image, fmt: str, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=quality, optimize=False)
    else:
        img.save(buf, fmt)
    return buf.getvalue()


def prepare(data: bytes, image_size: Optional[Tuple[int, int]] = None,
            formats: Optional[Tuple[str, ...]] = None) -> Prepared:
    """The bytes to send for one image file (`formats`: those the model takes as they are;
    None: SENDABLE_FORMATS; others are re-encoded as PNG or JPEG)."""
    if as_it_is(data, image_size):
        return Prepared(data, SENDABLE_FORMATS["JPEG"])
    img = open_image(data)
    if not needs_normalising(img, image_size, formats):
        return Prepared(data, SENDABLE_FORMATS[img.format])
    fmt = "PNG" if img.format in ("PNG", "GIF", "BMP", "TIFF") else "JPEG"
    return Prepared(encode_image(normalised(img, image_size), fmt), SENDABLE_FORMATS[fmt])


def as_it_is(data: bytes, image_size: Optional[Tuple[int, int]]) -> bool:
    """A JPEG whose header alone shows it goes as it is (what `prepare` would decide with
    Pillow, without its cost); False when unsure."""
    found = jpeg.header(data)
    return (found is not None
            and (image_size is None or (found.width, found.height) == image_size)
            and exif_orientation(found.exif) == 1)


def smaller_versions(data: bytes, min_side: int = MIN_SIDE) -> Iterator[Tuple[bytes, str]]:
    """JPEG re-encodings of an image at stepped-down quality, then at stepped-down size
    (while the shorter side stays at least `min_side`, or the image's own if smaller)."""
    img = normalised(open_image(data), None)
    for quality in JPEG_QUALITIES:
        yield encode_image(img, "JPEG", quality), "image/jpeg"
    floor = max(1, min(min_side, *img.size))
    while True:  # ends: each step shrinks both sides by a quarter
        width, height = (int(side * DOWNSCALE_FACTOR) for side in img.size)
        if min(width, height) < floor:
            return
        img = img.resize((width, height), Image.Resampling.BILINEAR)
        yield encode_image(img, "JPEG", JPEG_QUALITIES[-1]), "image/jpeg"


def quiet_pillow_warnings():
    """Pillow's own warnings (corrupt EXIF, ...) are not printed: what matters about an image
    is its outcome, a prediction or a dead letter."""
    warnings.filterwarnings("ignore", module=r"PIL(\..*)?$")
