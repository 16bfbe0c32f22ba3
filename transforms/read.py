"""ReadInputs: every --input -> its records (image entries, row refs), without reading any
image bytes (but those a TFRecord holds).

Three kinds of input:
- images (`ReadImages`): folders, globs and `gs://` prefixes, matched through Beam's
  FileSystems, so the same code lists a laptop folder and a bucket;
- rows (`ReadRows`): CSV and JSONL files whose rows name an image (`--uri_field`) or carry it
  inline as base64 (`--b64_field`), and file lists (one URI per line), one streamed pass per
  file.

Local paths are listed here (`list_local`), not by Beam's local filesystem, which cannot tell
a link or a FIFO from a file, nor take a folder whose name holds glob characters literally;
`docs/inputs-odd-files.md` gives the rules (links, non-regular files, names not in UTF-8).

Only references (URI, size, a row's other columns) travel on from here; the bytes are read
next to the request (EncodeInstances), so memory does not grow with the job. Keys are not
unique yet: `transforms.select.SelectTodo`, the job's one keyed step, keeps one record per key.
Every row counts once in `inputs` here, every image entry there; bad rows become `read` dead
letters naming their file and line.
"""
import os
import posixpath
import re
from typing import Any, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam

from core.paths import has_glob, quote_glob
from core.records import ImageRef, SkipReason
from transforms.listing import glob_root, list_pattern, MatchedEntry, open_path
from transforms.rows import check_csv_header, ReadRows, RowSpec
from transforms.tfrecords import ReadTFRecords, TFRecordSpec

IMAGE_EXTENSIONS = frozenset(
    (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"))

INPUT_FORMATS = ("auto", "images", "csv", "jsonl", "filelist", "tfrecord")
TFRECORD = "tfrecord"  # read by transforms.tfrecords
# `.tfrecord`, `.tfrecords`, TFDS's shard names (`train.tfrecord-00000-of-00016`) and globs
# of them (`*.tfrecord*`, `train.tfrecord-*`).
TFRECORD_NAME = re.compile(r"\.tfrecords?([-*?\[][^/]*)?$")
ROW_EXTENSIONS = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",  # read as JSON Lines: one object per line
    ".txt": "filelist",
    ".lst": "filelist",
}
COMPRESSED_EXTENSIONS = (".gz", ".bz2", ".deflate", ".zst", ".lzma")


# ----------------------------------------------------------------------------------------------
# Inputs and their formats


def input_format(given: str, requested: str = "auto") -> str:
    """The format of one --input: `requested`, or (auto) by extension; folders are images."""
    if requested not in INPUT_FORMATS:
        raise ValueError(f"unknown --input_format {requested!r}")
    if requested != "auto":
        return requested
    if "://" not in given and os.path.isdir(given):
        return "images"
    name = given.rstrip("/").lower()
    for compressed in COMPRESSED_EXTENSIONS:
        if name.endswith(compressed):
            name = name[:-len(compressed)]
    extension = posixpath.splitext(name)[1]
    if extension not in ROW_EXTENSIONS and TFRECORD_NAME.search(name):
        return TFRECORD
    return ROW_EXTENSIONS.get(extension, "images")


class InputSource(NamedTuple):
    """One --input as given, the pattern it matches and its format (`input_format`)."""
    given: str
    pattern: str
    format: str


def input_sources(inputs: Sequence[str], requested: str = "auto") -> Tuple[InputSource, ...]:
    """Each --input with its pattern and format, worked out once for the job."""
    return tuple(InputSource(given, pattern_for(given), input_format(given, requested))
                 for given in inputs)


def split_sources(sources: Sequence[InputSource]):
    """(image patterns, [(row pattern, format)]) of these sources."""
    images = [s.pattern for s in sources if s.format == "images"]
    rows = [(s.pattern, s.format) for s in sources if s.format != "images"]
    return images, rows


def pattern_for(path: str) -> str:
    """The pattern of one --input. A local path that exists is taken literally (glob
    characters in its name quoted); a folder becomes every file under it (`/**`)."""
    if "://" not in path and os.path.lexists(path):
        literal = quote_glob(os.path.abspath(path))
        return posixpath.join(literal, "**") if os.path.isdir(path) else literal
    if has_glob(path):
        return path if "://" in path else os.path.abspath(path)
    if path.startswith("gs://"):
        bucket_only = path.rstrip("/").count("/") == 2
        no_extension = "." not in path.rstrip("/").rsplit("/", 1)[-1]
        if path.endswith("/") or bucket_only or no_extension:  # a prefix ("folder")
            return quote_glob(path.rstrip("/")) + "/**"
        return path
    return os.path.abspath(path)


# ----------------------------------------------------------------------------------------------
# Listing


# ----------------------------------------------------------------------------------------------
# Image files


def is_image_path(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def is_hidden(path: str, root: str) -> bool:
    """A file whose name, or a folder of whose path below `root`, starts with a dot."""
    relative = path[len(root):] if path.startswith(root) else posixpath.basename(path)
    return "/." in "/" + relative  # a part of it starts with a dot


def skip_reason(path: str, root: str) -> Optional[SkipReason]:
    """Why a listed file is not an input image, or None."""
    if is_hidden(path, root):
        return SkipReason.HIDDEN
    if not is_image_path(path):
        return SkipReason.NOT_IMAGE
    return None


def match_pattern(pattern: str) -> Iterator[Tuple[str, Any]]:
    """(key, a MatchedEntry's fields as a plain tuple) for every entry the pattern matches,
    with why it is skipped: one element per listed file reaches the keyed step, and plain
    tuples took 6 % less peak memory there at 50,000 images than the named type
    (benchmarks/README.md: named types across the shuffle). Hinted as Any, here and below:
    from a NamedTuple hint Beam would infer a row schema."""
    root = glob_root(pattern)
    for key, listed in list_pattern(pattern):
        if listed.readable:
            listed = listed._replace(reason=skip_reason(key, root))
        yield key, tuple(listed)


def image_ref(key: str, listed: MatchedEntry, fields: Optional[dict] = None) -> ImageRef:
    """The ImageRef of a listed image file (`fields`: its --passthrough_fields values)."""
    return ImageRef(key=key, uri=open_path(key, listed), size=listed.size, fields=fields)


class ReadImages(beam.PTransform):
    """Patterns -> (key, MatchedEntry fields) per matched entry. An entry two patterns
    match comes twice: `transforms.select.SelectTodo` keeps one, and counts it there."""

    def __init__(self, patterns: List[str]):
        super().__init__()
        self._patterns = list(patterns)

    def expand(self, pbegin):
        return (pbegin
                | "Patterns" >> beam.Create(self._patterns)
                | "Match" >> beam.FlatMap(match_pattern))


# ----------------------------------------------------------------------------------------------
# Rows: CSV, JSONL, file lists


class Outputs(NamedTuple):
    """What ReadInputs produces: matched image entries (`ReadImages`), row refs (`ReadRows`)
    and read dead letters; keys are not unique yet (`transforms.select.SelectTodo`)."""
    images: beam.PCollection
    rows: beam.PCollection
    failed: beam.PCollection


def check_input(source: InputSource, first_path: str, spec: RowSpec):
    """ValueError when a row input cannot work with these fields (checked on its first file)."""
    if source.format == "csv":
        check_csv_header(first_path, spec)


# ----------------------------------------------------------------------------------------------
# All inputs together


def ref_rank(ref: ImageRef) -> tuple:
    """Which of several records with one key wins: rows (they carry fields), then by origin."""
    source, _, line = (ref.origin or "").rpartition(":")
    return (ref.fields is None, source, int(line) if line.isdigit() else 0)


class ReadInputs(beam.PTransform):
    """Every --input (`input_sources`) -> image entries, row refs and read dead letters. Image
    folders, row files and TFRecord files may be mixed in one job; one keyed step after this
    (`SelectTodo`) keeps one record per key and counts the image entries."""

    def __init__(self, sources: Sequence[InputSource], spec: RowSpec = RowSpec(),
                 tfrecord: TFRecordSpec = TFRecordSpec()):
        super().__init__()
        self._images, rows = split_sources(sources)
        self._rows = [(p, f) for p, f in rows if f != TFRECORD]
        self._tfrecords = [p for p, f in rows if f == TFRECORD]
        self._tfrecord = tfrecord
        self._spec = spec

    def expand(self, pbegin):
        p = pbegin.pipeline
        images, rows, failed = [], [], []
        if self._images:
            images.append(pbegin | "ReadImages" >> ReadImages(self._images))
        if self._rows:
            read = pbegin | "ReadRows" >> ReadRows(self._rows, self._spec)
            rows.append(read.refs)
            failed.append(read.failed)
        if self._tfrecords:
            read = pbegin | "ReadTFRecords" >> ReadTFRecords(self._tfrecords, self._tfrecord)
            rows.append(read.refs)
            failed.append(read.failed)
        return Outputs(images | "Images" >> beam.Flatten(pipeline=p),
                       rows | "Rows" >> beam.Flatten(pipeline=p),
                       failed | "Failed" >> beam.Flatten(pipeline=p))
