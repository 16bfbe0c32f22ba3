"""A JPEG header read without Pillow, for the common case only.

EncodeInstances sends an image as its original bytes when its header says it needs no
change. Pillow's `Image.open` learns that by parsing every marker in Python (~70 us for a
small JPEG, more than reading the file); `header()` walks the same markers by their
lengths and reads only the frame (size, components) and the EXIF block. It answers only
when it is sure Pillow would open the file the same way: for anything unusual (other
markers, fill bytes, Adobe, ICC, MPF or Photoshop segments, a segment cut short, a size
over Pillow's pixel limit) it returns None, and the caller asks Pillow.
"""
from typing import NamedTuple, Optional

from PIL import Image

SOI = b"\xff\xd8\xff"
SOS = 0xDA
# Start-of-frame markers (baseline, progressive, lossless, arithmetic...), as Pillow reads.
SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7,
                 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))
DQT = 0xDB
SKIPPED = frozenset((0xC4, 0xDD, 0xFE))  # DHT, DRI, COM: Pillow only skips them
APP0, APP1, APP15 = 0xE0, 0xE1, 0xEF
EXIF_PREFIX = b"Exif\x00\x00"
# APPn contents Pillow parses further (and may refuse): left to Pillow.
PILLOW_PARSED = (b"Adobe", b"ICC_PROFILE\x00", b"MPF\x00", b"FPXR\x00", b"Photoshop 3.0\x00")
JFIF_MIN_BYTES = 12


class Header(NamedTuple):
    width: int
    height: int
    components: int  # 1: Pillow's "L", 3: "RGB"
    exif: Optional[bytes]  # the first EXIF APP1 segment as Pillow keeps it, if any


def header(data: bytes) -> Optional[Header]:
    """The frame of a plain 8-bit greyscale or YCbCr/RGB JPEG, or None (ask Pillow)."""
    if not data.startswith(SOI):
        return None
    size = len(data)
    pos, frame, exif = 2, None, None
    while pos + 4 <= size:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        length = (data[pos + 2] << 8) | data[pos + 3]
        start, end = pos + 4, pos + 2 + length
        if length < 2 or end > size:
            return None
        if marker == SOS:
            return _checked(frame, exif)
        if marker in SOF:
            frame = _frame(data[start:end])
            if frame is None:
                return None
        elif marker == DQT:
            if not _tables_ok(data[start:end]):
                return None
        elif APP0 <= marker <= APP15:
            segment = data[start:end]
            if segment.startswith(PILLOW_PARSED):
                return None
            if marker == APP0 and segment.startswith(b"JFIF") and length - 2 < JFIF_MIN_BYTES:
                return None
            if marker == APP1 and segment.startswith(EXIF_PREFIX):
                if exif is not None:  # Pillow joins several: rare, left to it
                    return None
                exif = segment
        elif marker not in SKIPPED:
            return None
        pos = end
    return None


def _frame(segment: bytes):
    """(width, height, components) of an SOF segment Pillow reads without complaint."""
    if len(segment) < 6 or (len(segment) - 6) % 3 or segment[0] != 8:
        return None
    height = (segment[1] << 8) | segment[2]
    width = (segment[3] << 8) | segment[4]
    components = segment[5]
    if components not in (1, 3) or not width or not height:
        return None
    return width, height, components


def _tables_ok(segment: bytes) -> bool:
    """Pillow's check of a DQT segment: whole 8- or 16-bit tables of 64 entries."""
    pos = 0
    while pos < len(segment):
        precision = 1 if segment[pos] < 16 else 2
        pos += 1 + precision * 64
        if pos > len(segment):
            return False
    return True


def over_pixel_limit(width: int, height: int) -> bool:
    """More pixels than Pillow's MAX_IMAGE_PIXELS (read each time: it may be changed)?"""
    limit = Image.MAX_IMAGE_PIXELS
    return bool(limit) and width * height > limit


def _checked(frame, exif) -> Optional[Header]:
    if frame is None:
        return None
    width, height, components = frame
    if over_pixel_limit(width, height):
        return None  # Pillow's warning or refusal, and ours, come from Image.open
    return Header(width, height, components, exif)
