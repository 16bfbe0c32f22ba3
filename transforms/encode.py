"""EncodeInstances: read each image's bytes, check them, normalise only when needed, and
serialize the instance for the endpoint's protocol.

The hot path sends the original bytes untouched: the image header is parsed (cheap, lazy)
to learn the format, mode, size and EXIF orientation, and the pixels are decoded only when
the image must change (orientation, colour mode, format, `--image_size`, or a size over the
request budget).
"""
import base64
import binascii
import functools
import os
import stat
from typing import Optional, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from core.records import ImageRef, Instance, Stage
from imaging.decode import ImageError, MIN_SIDE, prepare, quiet_pillow_warnings, smaller_versions
from imaging.tensor import image_tensor, shown
from protocols.base import Protocol
from transforms import metrics
from transforms.failures import FAILED, failure
from transforms.listing import escaped_key
from transforms.progress import PROGRESS


# Files larger than this are not read at all (AutoML's image limit is 30 MB; a request holds
# 1.5 MB): a stray multi-GB file must not cost a worker that much memory.
MAX_FILE_BYTES = 64 * 1024 * 1024
READ_CHUNK_BYTES = 64 * 1024
# The format a file sent by its URI is taken to be, by its extension.
URI_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "jpe": "JPEG", "png": "PNG", "gif": "GIF",
               "bmp": "BMP", "webp": "WEBP", "tif": "TIFF", "tiff": "TIFF"}


def encode_instance(key: str, data: bytes, protocol: Protocol, max_request_bytes: int,
                    image_size: Optional[Tuple[int, int]] = None) -> Instance:
    """One serialized instance that fits a request of `max_request_bytes` on its own."""
    if protocol.tensor is not None:
        body = protocol.instance(key, b"", "", image_tensor(data, protocol.tensor))
        if _fits(protocol, body, max_request_bytes):
            return Instance(key, body)
        raise ImageError(Stage.ENCODE, f"a {protocol.tensor.dtype} tensor of "
                         f"{shown(protocol.tensor.size)} takes a request of "
                         f"{protocol.body_size([len(body)])} bytes, over --max_request_bytes="
                         f"{max_request_bytes} (--binary_data sends tensors as raw bytes)")
    prepared = prepare(data, image_size, protocol.image_formats)
    body = protocol.instance(key, prepared.data, prepared.mime_type)
    if _fits(protocol, body, max_request_bytes, len(prepared.data)):
        return Instance(key, body)
    min_side = min(image_size) if image_size else MIN_SIDE
    for smaller, mime_type in smaller_versions(prepared.data, min_side):
        body = protocol.instance(key, smaller, mime_type)
        if _fits(protocol, body, max_request_bytes, len(smaller)):
            return Instance(key, body)
    raise ImageError(
        Stage.ENCODE, f"image of {len(data)} bytes does not fit --max_request_bytes="
        f"{max_request_bytes} even after re-encoding (smallest request "
        f"{protocol.body_size([len(body)])} bytes)")


def _fits(protocol: Protocol, body: bytes, max_request_bytes: int,
          image_bytes: int = 0) -> bool:
    return (protocol.body_size([len(body)]) <= max_request_bytes
            and image_bytes <= (protocol.max_image_bytes or image_bytes))


def uri_instance(ref: ImageRef, protocol: Protocol) -> Optional[Instance]:
    """The instance naming the image by its URI (its bytes never read), when the protocol
    sends one for it (multimodal --send_uri, gs:// inputs); ImageError(Stage.ENCODE) when
    the file cannot go unread: a format the model does not take, or too large."""
    if ref.uri is None or ref.inline_b64 is not None:
        return None
    body = protocol.uri_instance(ref.key, ref.uri)
    if body is None:
        return None
    extension = os.path.splitext(ref.uri)[1].lower().lstrip(".")
    fmt = URI_FORMATS.get(extension)
    if fmt not in (protocol.image_formats or (fmt,)):
        raise ImageError(Stage.ENCODE, f"--send_uri sends the file unread, and the model "
                         f"takes {', '.join(protocol.image_formats or ())} only: "
                         f"{_shown(ref)} (without --send_uri it is re-encoded)")
    if ref.size is not None and protocol.max_image_bytes and ref.size > protocol.max_image_bytes:
        raise ImageError(Stage.ENCODE, f"file of {ref.size} bytes is over the "
                         f"{protocol.max_image_bytes} the model takes: {_shown(ref)}")
    return Instance(ref.key, body)


def read_bytes(ref: ImageRef) -> bytes:
    """The image's bytes, from its URI or its inline base64; ImageError(Stage.READ) if not."""
    where = f" (row {ref.origin})" if ref.origin else ""
    if ref.inline_b64 is not None:
        try:
            return base64.b64decode(ref.inline_b64, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ImageError(Stage.READ, f"invalid base64{where}: {e}")
    if ref.size is not None and ref.size > MAX_FILE_BYTES:
        raise ImageError(Stage.READ, _too_large(ref, ref.size, where))
    try:
        if "://" in ref.uri:
            with FileSystems.open(ref.uri, compression_type="uncompressed") as f:
                data = f.read() if ref.size is not None else read_capped(f.read)
        else:
            data = read_local(ref.uri)
    except ImageError as e:
        raise ImageError(Stage.READ, f"{e}: {_shown(ref)}{where}")
    except FileNotFoundError:
        raise ImageError(Stage.READ, f"file not found: {_shown(ref)}{where}")
    except Exception as e:
        if _is_not_found(e):
            raise ImageError(Stage.READ, f"file not found: {_shown(ref)}{where}")
        raise ImageError(Stage.READ, f"cannot read {_shown(ref)}{where}: {type(e).__name__}: {e}")
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(Stage.READ, _too_large(ref, len(data), where))
    return data


def read_local(path: str) -> bytes:
    """A local file's bytes (at most MAX_FILE_BYTES + 1), opened directly rather than through
    Beam's FileSystems. Opened without blocking and checked to be a regular file before any
    read: a FIFO, socket or device is never read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(Stage.READ, "not a regular file (a FIFO, socket or device): "
                                     "never read")
        if info.st_size > MAX_FILE_BYTES:  # refused unread (its listing may not have sized it)
            raise ImageError(Stage.READ, _over_the_cap(info.st_size))
        return read_capped(functools.partial(os.read, fd), info.st_size)
    finally:
        os.close(fd)


def read_capped(read, size: Optional[int] = None,
                chunk_bytes: int = READ_CHUNK_BYTES) -> bytes:
    """A file's bytes through `read(n)`, at most MAX_FILE_BYTES + 1. `size`: what fstat said
    (None: unknown). With a size, one read when the file still has it (a read that stops at
    `size` bytes when asked for one more is its end); without one, or once it grew, reads of
    `chunk_bytes` on to an empty read."""
    chunks, total = [], 0
    while total <= MAX_FILE_BYTES:
        sized = size is not None and total <= size
        want = min(size + 1 - total if sized else chunk_bytes, MAX_FILE_BYTES + 1 - total)
        chunk = read(want)
        chunks.append(chunk)
        total += len(chunk)
        if not chunk or (len(chunk) < want and total == size):
            break
    return b"".join(chunks)


def _too_large(ref: ImageRef, size: int, where: str) -> str:
    return f"{_over_the_cap(size)}: {_shown(ref)}{where}"


def _over_the_cap(size: int) -> str:
    return (f"file of {size} bytes is over {MAX_FILE_BYTES} bytes, larger than any image an "
            f"endpoint takes")


def _shown(ref: ImageRef) -> str:
    """The file's name as text for a message (a name that is not UTF-8 escaped)."""
    return escaped_key(ref.uri)


def _is_not_found(error: Exception) -> bool:
    """A missing object, however the filesystem says it (GCS: NotFound / HTTP 404)."""
    return (getattr(error, "code", None) == 404
            or type(error).__name__ == "NotFound"
            or isinstance(error.__cause__, FileNotFoundError))


class _EncodeFn(beam.DoFn):
    def __init__(self, protocol: Protocol, max_request_bytes: int,
                 image_size: Optional[Tuple[int, int]]):
        self._protocol = protocol
        self._max_request_bytes = max_request_bytes
        self._image_size = image_size

    def setup(self):
        quiet_pillow_warnings()

    def start_bundle(self):
        self._counts = metrics.BundleCounts()

    def process(self, ref: ImageRef):
        try:
            instance = uri_instance(ref, self._protocol)
            if instance is None:
                instance = encode_instance(ref.key, read_bytes(ref), self._protocol,
                                           self._max_request_bytes, self._image_size)
            yield instance._replace(fields=ref.fields) if ref.fields else instance
            self._counts.inc("encoded")
        except ImageError as e:
            PROGRESS.settled(1)
            yield failure(ref.key, e.stage, str(e), self._counts)
        except Exception as e:  # anything else about one image must not fail the bundle
            PROGRESS.settled(1)
            yield failure(ref.key, Stage.ENCODE, f"cannot encode: {type(e).__name__}: {e}",
                          self._counts)

    def finish_bundle(self):
        self._counts.flush()


class EncodeInstances(beam.PTransform):
    """ImageRef -> Instance, with a `failed` output of dead-letter rows."""

    def __init__(self, protocol: Protocol, max_request_bytes: int,
                 image_size: Optional[Tuple[int, int]] = None):
        super().__init__()
        self._fn = _EncodeFn(protocol, max_request_bytes, image_size)

    def expand(self, refs):
        return refs | "Encode" >> beam.ParDo(self._fn).with_outputs(FAILED, main="instances")
