"""ReadTFRecords: TFRecord files -> an ImageRef per record, its image bytes inline, with a
`read` dead letter per record that cannot be read.

A record is a serialized `tf.train.Example` whose `--tfrecord_feature` (default
`image/encoded`) holds the image's bytes, or (`--tfrecord_feature ''`) the image's bytes
themselves. Its key is `--key_field`'s feature, or `<file>:<record index>` (from 0): stable
from run to run, so backfill, `--limit` and resume work as for rows.

The records are framed here (docs/inputs.md, "TFRecord files") rather than by Beam's
`ReadFromTFRecord`: that source yields records without their file or index, and raises on the
first bad CRC, failing the job. Framing uses Beam's own masked CRC32C
(`apache_beam.io.tfrecordio`) over Beam's FileSystems (local and `gs://`); `.gz` files are
read through Python's gzip, which (unlike Beam's decompressor) says when a stream is cut
short. A record whose data CRC is wrong but whose length is sound is one dead letter and the
next record is read; a bad length CRC, a truncated tail or a broken gzip stream ends that
file with one dead letter; the records before it are kept. Each names the file and the byte
offset of the record (in the decompressed stream of a `.gz`).
Examples are read by `transforms.examples`.
"""
import base64
import contextlib
import gzip
import struct
import zlib
from typing import Callable, Iterator, NamedTuple, Optional, Sequence, Tuple, Union

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil

from core.records import ImageRef, Stage
from transforms import metrics
from transforms.encode import MAX_FILE_BYTES
from transforms.examples import (example_features, no_feature, one_value, passthrough_value,
                                 record_key, RecordError)
from transforms.failures import FAILED, failure
from transforms.listing import open_path
from transforms.rows import first_listing, match_row_files, Rows, unopened

DEFAULT_FEATURE = "image/encoded"
# A record may hold an image of up to MAX_FILE_BYTES and its other features; a longer one is
# skipped unread (a dead letter), so a sound but huge length never becomes one allocation.
MAX_RECORD_BYTES = 2 * MAX_FILE_BYTES

_HEADER = struct.Struct("<QI")  # length, masked CRC32C of the length's 8 bytes
_FOOTER = struct.Struct("<I")  # masked CRC32C of the data
_SKIP_CHUNK_BYTES = 1 << 20


class TFRecordSpec(NamedTuple):
    """How to read a TFRecord: the feature holding the image (None: the record is the image),
    the feature holding the key (None: `<file>:<index>`), and the features passed through."""
    feature: Optional[str] = DEFAULT_FEATURE
    key_field: Optional[str] = None
    fields: Tuple[str, ...] = ()


# ----------------------------------------------------------------------------------------------
# Framing


def masked_crc32c(data: bytes) -> int:
    """The TFRecord checksum: CRC32C, rotated and offset (PROTOCOLS.md), as Beam computes it."""
    return _TFRecordUtil._masked_crc32c(data)  # pylint: disable=protected-access


class Record(NamedTuple):
    index: int  # from 0 in its file
    offset: int  # bytes from the start of the (decompressed) file
    data: bytes


class Damage(NamedTuple):
    """A record that cannot be read: where, why, and whether the rest of its file is lost."""
    index: int
    offset: int
    error: str
    ends_file: bool


def read_exactly(read: Callable[[int], bytes], n: int) -> bytes:
    """`n` bytes through `read`, fewer only at the end of the stream."""
    chunks, got = [], 0
    while got < n:
        chunk = read(n - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def skip_bytes(read: Callable[[int], bytes], n: int) -> int:
    """Read and drop `n` bytes; how many there were."""
    skipped = 0
    while skipped < n:
        chunk = read(min(_SKIP_CHUNK_BYTES, n - skipped))
        if not chunk:
            break
        skipped += len(chunk)
    return skipped


def _body(read: Callable[[int], bytes], index: int, offset: int, length: int,
          max_record_bytes: int) -> Union[Record, Damage]:
    """The record whose sound header gave `length`, or why it cannot be had."""
    wanted = length + _FOOTER.size
    if length > max_record_bytes:
        got = skip_bytes(read, wanted)
        if got == wanted:
            return Damage(index, offset, f"a record of {length} bytes, over the "
                                         f"{max_record_bytes} bytes a record may hold: skipped",
                          False)
        body = b""
    else:
        body = read_exactly(read, wanted)
        got = len(body)
    if got < wanted:
        return Damage(index, offset, f"truncated: the file ends {got} bytes into a record of "
                                     f"{length} bytes (and its 4-byte CRC)", True)
    if masked_crc32c(body[:length]) != _FOOTER.unpack_from(body, length)[0]:
        return Damage(index, offset, "data CRC mismatch: record skipped", False)
    return Record(index, offset, body[:length])


def framed_records(read: Callable[[int], bytes], max_record_bytes: int = MAX_RECORD_BYTES
                   ) -> Iterator[Union[Record, Damage]]:
    """Every record of a TFRecord stream, in order, or the Damage where one cannot be read.
    After a Damage that `ends_file`, nothing more is read."""
    index = offset = 0
    while True:
        try:
            header = read_exactly(read, _HEADER.size)
            if not header:
                return
            if len(header) < _HEADER.size:
                item = Damage(index, offset, f"truncated: the file ends {len(header)} bytes "
                                             f"into a record's {_HEADER.size}-byte header", True)
            else:
                length, length_crc = _HEADER.unpack(header)
                if masked_crc32c(header[:8]) != length_crc:
                    item = Damage(index, offset, "length CRC mismatch: the rest of the file "
                                                 "cannot be framed and is not read", True)
                else:
                    item = _body(read, index, offset, length, max_record_bytes)
        except (EOFError, zlib.error, gzip.BadGzipFile) as e:
            item = Damage(index, offset, f"the compressed stream breaks here "
                                         f"({type(e).__name__}: {e}); the rest is not read",
                          True)
        yield item
        if isinstance(item, Damage) and item.ends_file:
            return
        index += 1
        offset += _HEADER.size + length + _FOOTER.size


def is_gzip(path: str) -> bool:
    return CompressionTypes.detect_compression_type(path) == CompressionTypes.GZIP


@contextlib.contextmanager
def open_stream(path: str):
    """A TFRecord file opened for reading through Beam's FileSystems, decompressed by its
    extension; `.gz` through Python's gzip, which raises when the stream is cut short."""
    if not is_gzip(path):
        with FileSystems.open(path) as f:
            yield f
        return
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
        with gzip.GzipFile(fileobj=raw, mode="rb") as f:
            yield f


# ----------------------------------------------------------------------------------------------
# Records -> ImageRefs


def where_text(source: str, index: int, offset: int, compressed: bool) -> str:
    """`<file>: record 7 at byte 1234` (of a `.gz` file's decompressed stream)."""
    stream = " of the decompressed stream" if compressed else ""
    return f"{source}: record {index} at byte {offset}{stream}"


def record_ref(record: Record, source: str, spec: TFRecordSpec, compressed: bool = False
               ) -> ImageRef:
    """The ImageRef of one record; RecordError when it holds no image (or no key)."""
    origin = f"{source}:{record.index}"
    where = where_text(source, record.index, record.offset, compressed)
    if not spec.feature:
        image, key, fields = record.data, origin, {}
    else:
        features = example_features(record.data, where)
        image = one_value(features, spec.feature, ("bytes",), "--tfrecord_feature", where)
        key = record_key(features, spec.key_field, where) if spec.key_field else origin
        fields = {name: passthrough_value(features, name) for name in spec.fields}
    return ImageRef(key=key, uri=None, inline_b64=base64.b64encode(image).decode("ascii"),
                    size=len(image), fields=fields, origin=origin)


def missing_features(data: bytes, source: str, spec: TFRecordSpec) -> Optional[str]:
    """Why the first record of a file says the flags do not fit the data (not an Example, or
    no image / key feature), or None. For the preflight check only."""
    if not spec.feature:
        return None
    where = where_text(source, 0, 0, False)
    try:
        features = example_features(data, where)
    except RecordError as e:
        return str(e)
    for name, flag in ((spec.feature, "--tfrecord_feature"), (spec.key_field, "--key_field")):
        if name and name not in features:
            return no_feature(features, name, flag, where)
    return None


def check_first_record(path: str, spec: TFRecordSpec):
    """ValueError when the first record of a TFRecord file does not fit the flags; an empty
    file or a damaged first record is left to the job (a dead letter)."""
    with open_stream(path) as f:
        item = next(framed_records(f.read), None)
    if isinstance(item, Record):
        problem = missing_features(item.data, path, spec)
        if problem:
            raise ValueError(problem)


class _ReadTFRecordsFn(beam.DoFn):
    """A listed TFRecord file -> ImageRef per record, streamed; records that cannot be read
    are failed. A file that is not a regular file is never opened."""

    def __init__(self, spec: TFRecordSpec):
        self._spec = spec

    def start_bundle(self):
        self._counts = metrics.BundleCounts()

    def finish_bundle(self):
        self._counts.flush()

    def process(self, match):
        source, listed = match
        if not listed.readable:
            yield from unopened(source, listed, self._counts)
            return
        path = open_path(source, listed)
        compressed = is_gzip(path)
        read = 0
        try:
            with open_stream(path) as f:
                for item in framed_records(f.read):
                    read += 1
                    self._counts.inc("inputs")
                    yield self._outcome(source, item, compressed)
        except Exception as e:
            if read:  # records were already emitted: fail the bundle so the runner retries it
                raise
            self._counts.inc("inputs")  # the file could not be opened: one record for it
            yield self._failed(source, f"{source}: cannot read TFRecords: "
                                       f"{type(e).__name__}: {e}")

    def _failed(self, key: str, message: str):
        return failure(key, Stage.READ, message, self._counts)

    def _outcome(self, source: str, item: Union[Record, Damage], compressed: bool):
        if isinstance(item, Damage):
            where = where_text(source, item.index, item.offset, compressed)
            return self._failed(f"{source}:{item.index}", f"{where}: {item.error}")
        key = f"{source}:{item.index}"
        try:
            return record_ref(item, source, self._spec, compressed)
        except RecordError as e:
            return self._failed(key, str(e))
        except Exception as e:  # anything else about one record must not fail the bundle
            where = where_text(source, item.index, item.offset, compressed)
            return self._failed(key, f"{where}: cannot read the record: "
                                              f"{type(e).__name__}: {e}")


class ReadTFRecords(beam.PTransform):
    """Patterns of TFRecord files -> ImageRef per record, with a `failed` output."""

    def __init__(self, patterns: Sequence[str], spec: TFRecordSpec = TFRecordSpec()):
        super().__init__()
        self._patterns = list(patterns)
        self._spec = spec

    def expand(self, pbegin):
        read = (pbegin
                | "Patterns" >> beam.Create(self._patterns)
                | "Match" >> beam.FlatMap(match_row_files)
                | "Dedupe" >> beam.CombinePerKey(first_listing)
                | "Read" >> beam.ParDo(_ReadTFRecordsFn(self._spec))
                .with_outputs(FAILED, main="refs"))
        return Rows(read.refs, read.failed)
