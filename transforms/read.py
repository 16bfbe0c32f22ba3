"""ReadInputs: every --input -> its records (image entries, row refs), without reading any
image bytes (but those a TFRecord holds).

Three kinds of input:
- images (`ReadImages`): folders, globs and `gs://` prefixes, matched through Beam's
  FileSystems, so the same code lists a laptop folder and a bucket;
- rows (`ReadRows`): CSV and JSONL files whose rows name an image (`--uri_field`) or carry it
  inline as base64 (`--b64_field`), and file lists (one URI per line), one streamed pass per
  file.
- TFRecord files (`transforms.tfrecords.ReadTFRecords`): one record per image, its bytes
  inline.

Local paths are listed here (`list_local`), not by Beam's local filesystem, which cannot tell
a link or a FIFO from a file, nor take a folder whose name holds glob characters literally;
`docs/inputs-odd-files.md` gives the rules (links, non-regular files, names not in UTF-8).

Only references (URI, size, a row's other columns) travel on from here; the bytes are read
next to the request (EncodeInstances), so memory does not grow with the job. Keys are not
unique yet: `transforms.todo.SelectTodo`, the job's one keyed step, keeps one record per key.
Every row counts once in `inputs` here, every image entry there; bad rows become `read` dead
letters naming their file and line.
"""
import csv
import json
import os
import posixpath
import re
import stat
from typing import Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.filesystem import FileSystem
from apache_beam.io.filesystems import FileSystems

from transforms import metrics
from transforms.records import ImageRef, dead_letter, is_unicode

FAILED = "failed"
IMAGE, ROW = 0, 1  # the kinds of value SelectTodo groups by key (transforms.todo)
IMAGE_EXTENSIONS = frozenset(
    (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"))
GLOB_CHARS = frozenset("*?[")

INPUT_FORMATS = ("auto", "images", "csv", "jsonl", "filelist", "tfrecord")
ROW_FORMATS = ("csv", "jsonl", "filelist")
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


def has_glob(path: str) -> bool:
    return any(c in GLOB_CHARS for c in path)


def quote_glob(path: str) -> str:
    """`path` as a pattern that matches only itself: each glob character in a one-character
    class (`set[1]` -> `set[[]1]`), the only quoting Beam's patterns know."""
    return "".join(f"[{c}]" if c in GLOB_CHARS else c for c in path)


def unquote_glob(part: str) -> str:
    return re.sub(r"\[([*?\[])\]", r"\1", part)


def is_glob_part(part: str) -> bool:
    """A path component holding a glob (not only glob characters quoted by quote_glob)."""
    return has_glob(re.sub(r"\[[*?\[]\]", "", part))


def escaped_key(path: str) -> str:
    """`path` as valid text: a local file name that is not UTF-8 (undecodable bytes kept as
    surrogates by Python) gets its bytes escaped as `\\xNN`; stable from run to run."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")


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


class Listed(NamedTuple):
    """One entry a pattern matched. `reason` (a `skipped_*` counter, or UNREADABLE_FOLDER)
    says why it is not read; `raw` holds a local path's bytes when its key had to be
    escaped, so the file can still be opened."""
    size: Optional[int]
    reason: Optional[str] = None
    raw: Optional[bytes] = None
    error: Optional[str] = None


SKIPPED_SYMLINK = "skipped_symlink"
SKIPPED_NOT_REGULAR = "skipped_not_regular_file"
UNREADABLE_FOLDER = "unreadable_folder"


def glob_root(pattern: str) -> str:
    """The fixed part of a pattern (quoted glob characters unquoted): the folder the glob
    starts from, or the path itself when the pattern holds no glob."""
    parts = pattern.split("/")
    for i, part in enumerate(parts):
        if is_glob_part(part):
            return "/".join(unquote_glob(p) for p in parts[:i])
    return "/".join(unquote_glob(p) for p in parts)


def entry_kind(mode: int) -> Optional[str]:
    """None for a regular file; else why it is never opened."""
    if stat.S_ISLNK(mode):
        return SKIPPED_SYMLINK
    return None if stat.S_ISREG(mode) else SKIPPED_NOT_REGULAR


def walk_folder(root: str) -> Iterator[Tuple[str, Listed]]:
    """Every entry under a local folder, in name order. Links found here are not followed
    (to files and to folders alike); FIFOs, sockets and devices are never opened."""
    folders = [root]
    while folders:
        folder = folders.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            yield folder, Listed(None, UNREADABLE_FOLDER,
                                 error=f"cannot list folder: {type(e).__name__}")
            continue
        subfolders = []
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:  # gone since the folder was read
                continue
            if stat.S_ISDIR(info.st_mode):
                subfolders.append(entry.path)
            else:
                kind = entry_kind(info.st_mode)
                yield entry.path, Listed(info.st_size if kind is None else None, kind)
        folders.extend(reversed(subfolders))


def list_local(pattern: str) -> Iterator[Tuple[str, Listed]]:
    """Local entries a pattern matches (Beam's pattern syntax). A path named without a glob
    is followed when it is a link: the user named it."""
    root = glob_root(pattern)
    if not is_glob_part(pattern):
        try:
            info = os.stat(root)
        except OSError:
            return
        kind = entry_kind(info.st_mode)
        yield root, Listed(info.st_size if kind is None else None, kind)
        return
    if not os.path.isdir(root):
        return
    rest = pattern[len(quote_glob(root)):] if pattern.startswith(quote_glob(root)) else None
    regex = None if rest == "/**" else re.compile(FileSystem.translate_pattern(pattern))
    for path, listed in walk_folder(root):
        if regex is None or regex.match(path):
            yield path, listed


def list_remote(pattern: str) -> Iterator[Tuple[str, Listed]]:
    for result in FileSystems.match([pattern]):
        for metadata in result.metadata_list:
            yield metadata.path, Listed(metadata.size_in_bytes)


def list_pattern(pattern: str) -> Iterator[Tuple[str, Listed]]:
    """(key, Listed) for every entry a pattern matches, locally or on any Beam filesystem."""
    entries = list_local(pattern) if "://" not in pattern else list_remote(pattern)
    for path, listed in entries:
        key = escaped_key(path)
        yield key, listed._replace(raw=os.fsencode(path)) if key != path else listed


def first_match(pattern: str) -> Optional[Tuple[str, Listed]]:
    """The first entry a pattern matches (a launcher-side preflight check), or None."""
    return next(iter(list_pattern(pattern)), None)


def open_path(key: str, listed: Listed) -> str:
    """The path to open for a listed entry (its raw bytes when its key is escaped)."""
    return os.fsdecode(listed.raw) if listed.raw else key


# ----------------------------------------------------------------------------------------------
# Image files


def is_image_path(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def is_hidden(path: str, root: str) -> bool:
    """A file whose name, or a folder of whose path below `root`, starts with a dot."""
    relative = path[len(root):] if path.startswith(root) else posixpath.basename(path)
    return "/." in "/" + relative  # a part of it starts with a dot


def skip_reason(path: str, root: str) -> Optional[str]:
    """Why a listed file is not an input image (a `skipped_*` counter), or None."""
    if is_hidden(path, root):
        return "skipped_hidden"
    if not is_image_path(path):
        return "skipped_not_image"
    return None


def match_pattern(pattern: str) -> Iterable[Tuple[str, tuple]]:
    """(key, (IMAGE, Listed as a plain tuple)) for every entry the pattern matches, with why
    it is skipped: small values, as these cross the job's keyed step (a named tuple is
    pickled)."""
    root = glob_root(pattern)
    for key, (size, reason, raw, error) in list_pattern(pattern):
        yield key, (IMAGE, (size, reason or skip_reason(key, root), raw, error))


def match_row_files(pattern: str) -> Iterable[Tuple[str, tuple]]:
    """(key, Listed as a plain tuple) for every row file the pattern matches."""
    for key, listed in list_pattern(pattern):
        yield key, tuple(listed)


def first(values: Iterable):
    """The first of several matches of one row file (several --input patterns may overlap)."""
    return next(iter(values), None)


def _failed(key: str, message: str):
    metrics.counter("failed_read").inc()
    return beam.pvalue.TaggedOutput(FAILED, dead_letter(key, "read", message))


def _skipped(reason: str):
    metrics.counter(reason).inc()
    metrics.counter("skipped").inc()


def image_ref(key: str, listed: Listed, fields: Optional[dict] = None) -> ImageRef:
    """The ImageRef of a listed image file (`fields`: its --passthrough_fields values)."""
    return ImageRef(key=key, uri=open_path(key, listed), size=listed.size, fields=fields)


class ReadImages(beam.PTransform):
    """Patterns -> (key, (IMAGE, Listed tuple)) per matched entry. An entry two patterns
    match comes twice: `transforms.todo.SelectTodo` keeps one, and counts it there."""

    def __init__(self, patterns: List[str]):
        super().__init__()
        self._patterns = list(patterns)

    def expand(self, pbegin):
        return (pbegin
                | "Patterns" >> beam.Create(self._patterns)
                | "Match" >> beam.FlatMap(match_pattern))


# ----------------------------------------------------------------------------------------------
# Rows: CSV, JSONL, file lists


class Rows(NamedTuple):
    """What ReadRows produces: an ImageRef per row, and read dead letters."""
    refs: beam.PCollection
    failed: beam.PCollection


class Outputs(NamedTuple):
    """What ReadInputs produces: matched image entries (`ReadImages`), row refs (`ReadRows`)
    and read dead letters; keys are not unique yet (`transforms.todo.SelectTodo`)."""
    images: beam.PCollection
    rows: beam.PCollection
    failed: beam.PCollection


class RowSpec(NamedTuple):
    """Which row fields hold the image URI, the inline base64 bytes, and the record key."""
    uri_field: str = "uri"
    b64_field: Optional[str] = None
    key_field: Optional[str] = None


class RowError(ValueError):
    """A row that cannot become an ImageRef (the message names its file and line)."""


def resolve_uri(uri: str, source: str) -> str:
    """`uri` as an absolute path or full URI; relative paths resolve against `source`'s folder."""
    uri = uri.strip()
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if "://" in uri:
        return uri
    if "://" in source:
        scheme, rest = source.split("://", 1)
        bucket, _, path = rest.partition("/")
        joined = posixpath.normpath(posixpath.join("/", posixpath.dirname(path), uri))
        return f"{scheme}://{bucket}{joined}"
    if not os.path.isabs(uri):
        uri = os.path.join(os.path.dirname(source), uri)
    return os.path.normpath(uri)


def as_text(value) -> Optional[str]:
    """A row value as text for pass-through: strings as they are, other JSON as JSON."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return json.dumps(value) if isinstance(value, bool) else str(value)


def _value(row: dict, field: Optional[str]) -> Optional[str]:
    """A field's non-blank value as text, or None."""
    if not field:
        return None
    value = row.get(field)
    if value is None or isinstance(value, (dict, list)):
        return None
    text = as_text(value).strip()
    return text or None


def row_ref(row: dict, spec: RowSpec, source: str, line: int) -> ImageRef:
    """The ImageRef of one parsed row; RowError when the row names no image or no key."""
    origin = f"{source}:{line}"
    b64 = _value(row, spec.b64_field)
    uri = None if b64 else _value(row, spec.uri_field)
    if not b64 and not uri:
        wanted = " or ".join(repr(f) for f in (spec.b64_field, spec.uri_field) if f)
        columns = ", ".join(str(k) for k in row) or "none"
        raise RowError(f"{source} line {line}: no value in {wanted} (fields: {columns})")
    key = None
    if spec.key_field:
        key = _value(row, spec.key_field)
        if key is None:
            raise RowError(f"{source} line {line}: no value in key field "
                           f"{spec.key_field!r}")
    fields = {str(k): as_text(v) for k, v in row.items() if k != spec.b64_field}
    if b64:
        return ImageRef(key=key or origin, uri=None, inline_b64=b64, fields=fields,
                        origin=origin)
    uri = resolve_uri(uri, source)
    return ImageRef(key=key or uri, uri=uri, fields=fields, origin=origin)


def text_lines(binary_lines: Iterable[bytes]) -> Iterator[Tuple[int, str]]:
    """(line number from 1, text) of a byte stream; invalid UTF-8 survives as surrogates."""
    for number, raw in enumerate(binary_lines, start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        yield number, raw.decode("utf-8", "surrogateescape")


def _check_utf8(text: str, source: str, line: int):
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise RowError(f"{source} line {line}: not valid UTF-8")


def parse_jsonl(lines: Iterable[Tuple[int, str]], source: str):
    """(line, row dict or RowError) per non-blank line of a JSON Lines file."""
    for number, text in lines:
        if not text.strip():
            continue
        try:
            _check_utf8(text, source, number)
            try:
                row = json.loads(text)
            except ValueError as e:
                raise RowError(f"{source} line {number}: not JSON ({e})")
            except RecursionError:
                raise RowError(f"{source} line {number}: JSON nested too deeply to read")
            if not isinstance(row, dict):
                raise RowError(f"{source} line {number}: not a JSON object "
                               f"({type(row).__name__})")
            if "\\u" in text and not is_unicode(json.dumps(row, ensure_ascii=False)):
                raise RowError(f"{source} line {number}: not valid Unicode (an escaped lone "
                               f"surrogate, such as \\ud800)")
            yield number, row
        except RowError as e:
            yield number, e


# Inline base64 images make long CSV fields: allow up to the largest image a request can hold
# many times over (the csv module's default limit, 128 KiB, is a ~96 KB image).
CSV_FIELD_LIMIT = 256 * 1024 * 1024


def allow_long_csv_fields():
    """Raise the csv module's field limit to CSV_FIELD_LIMIT, never lowering a larger one.

    The limit is process-wide state of the csv module, so it is raised only where rows are
    read, not when this module is imported."""
    if csv.field_size_limit() < CSV_FIELD_LIMIT:
        csv.field_size_limit(CSV_FIELD_LIMIT)


def parse_csv(lines: Iterable[Tuple[int, str]], source: str):
    """(line, row dict or RowError) per data row of a CSV file with a header row."""
    allow_long_csv_fields()
    numbered = iter(lines)
    last = [0]

    def texts():
        for number, text in numbered:
            last[0] = number
            yield text

    reader = csv.reader(texts())
    header = None
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as e:  # the reader goes on with the next row after one bad row
            yield last[0], RowError(f"{source} line {last[0]}: not valid CSV ({e})")
            continue
        number = last[0]
        if not cells or not any(c.strip() for c in cells):
            continue
        try:
            for cell in cells:
                _check_utf8(cell, source, number)
            if header is None:
                header = [c.strip() for c in cells]
                continue
            if len(cells) > len(header):
                raise RowError(f"{source} line {number}: {len(cells)} fields but the header "
                               f"has {len(header)} (an unquoted comma?)")
            yield number, dict(zip(header, cells + [None] * (len(header) - len(cells))))
        except RowError as e:
            yield number, e


def parse_filelist(lines: Iterable[Tuple[int, str]], source: str, uri_field: str):
    """(line, {uri_field: uri} or RowError) per URI line; blank lines and `#` comments skipped."""
    for number, text in lines:
        text = text.strip()
        if not text or text.startswith("#"):
            continue
        try:
            _check_utf8(text, source, number)
            yield number, {uri_field: text}
        except RowError as e:
            yield number, e


def parse_rows(fmt: str, lines: Iterable[Tuple[int, str]], source: str, spec: RowSpec):
    """(line, ImageRef or RowError) per record of a row file."""
    if fmt == "csv":
        rows = parse_csv(lines, source)
    elif fmt == "jsonl":
        rows = parse_jsonl(lines, source)
    elif fmt == "filelist":
        rows = parse_filelist(lines, source, spec.uri_field)
        spec = spec._replace(b64_field=None, key_field=None)
    else:
        raise ValueError(f"not a row format: {fmt!r}")
    for number, row in rows:
        if isinstance(row, RowError):
            yield number, row
            continue
        try:
            ref = row_ref(row, spec, source, number)
            yield number, ref._replace(fields=None) if fmt == "filelist" else ref
        except RowError as e:
            yield number, e


def csv_header(path: str) -> List[str]:
    """The header row of a CSV file (for the preflight check)."""
    with FileSystems.open(path) as f:
        for _, text in text_lines(iter(f.readline, b"")):
            cells = next(csv.reader([text]), [])
            if any(c.strip() for c in cells):
                return [c.strip() for c in cells]
    return []


def check_csv_header(path: str, spec: RowSpec):
    """ValueError when a CSV's header has none of the image fields (or not the key field)."""
    header = csv_header(path)
    wanted = [f for f in (spec.b64_field, spec.uri_field) if f]
    if not any(f in header for f in wanted):
        raise ValueError(f"{path}: the header has no {' or '.join(map(repr, wanted))} column "
                         f"(columns: {', '.join(header) or 'none'}); set --uri_field or "
                         f"--b64_field")
    if spec.key_field and spec.key_field not in header:
        raise ValueError(f"{path}: the header has no --key_field {spec.key_field!r} column "
                         f"(columns: {', '.join(header) or 'none'})")


def check_input(source: InputSource, first_path: str, spec: RowSpec):
    """ValueError when a row input cannot work with these fields (checked on its first file)."""
    if source.format == "csv":
        check_csv_header(first_path, spec)


class _ParseRowsFn(beam.DoFn):
    """A listed row file -> ImageRef per row, streamed; bad rows are failed. A row file that
    is not a regular file is never opened."""

    def __init__(self, fmt: str, spec: RowSpec):
        self._fmt = fmt
        self._spec = spec

    def process(self, match):
        source, listed = match[0], Listed(*match[1])
        if listed.reason is not None:
            metrics.counter("inputs").inc()  # the file is one record: it is not read
            if listed.reason == SKIPPED_NOT_REGULAR:
                yield _failed(source, f"{source}: not a regular file (a FIFO, socket or "
                                      f"device): never opened")
            elif listed.reason == UNREADABLE_FOLDER:
                yield _failed(source, listed.error)
            else:
                _skipped(listed.reason)
            return
        line = 0
        try:
            with FileSystems.open(open_path(source, listed)) as f:
                for line, ref in parse_rows(self._fmt, text_lines(iter(f.readline, b"")),
                                            source, self._spec):
                    metrics.counter("inputs").inc()
                    if isinstance(ref, ImageRef):
                        yield ref
                    else:
                        yield _failed(f"{source}:{line}", str(ref))
        except Exception as e:
            if line:  # rows were already emitted: fail the bundle so the runner retries it
                raise
            metrics.counter("inputs").inc()  # the file could not be opened: one record for it
            yield _failed(source, f"{source}: cannot read rows: {type(e).__name__}: {e}")


class ReadRows(beam.PTransform):
    """[(pattern, format)] of row files -> ImageRef per row, with a `failed` output."""

    def __init__(self, inputs: Sequence[Tuple[str, str]], spec: RowSpec):
        super().__init__()
        self._inputs = list(inputs)
        self._spec = spec

    def expand(self, pbegin):
        refs, failed = [], []
        for fmt in ROW_FORMATS:
            patterns = [p for p, f in self._inputs if f == fmt]
            if not patterns:
                continue
            name = {"csv": "Csv", "jsonl": "Jsonl", "filelist": "FileList"}[fmt]
            parsed = (pbegin
                      | f"{name}Patterns" >> beam.Create(patterns)
                      | f"{name}Match" >> beam.FlatMap(match_row_files)
                      | f"{name}Dedupe" >> beam.CombinePerKey(first)
                      | f"{name}Parse" >> beam.ParDo(_ParseRowsFn(fmt, self._spec))
                      .with_outputs(FAILED, main="refs"))
            refs.append(parsed.refs)
            failed.append(parsed.failed)
        return Rows(refs | "Refs" >> beam.Flatten(pipeline=pbegin.pipeline),
                    failed | "Failed" >> beam.Flatten(pipeline=pbegin.pipeline))


# ----------------------------------------------------------------------------------------------
# All inputs together


def ref_rank(ref: ImageRef) -> tuple:
    """Which of several records with one key wins: rows (they carry fields), then by origin."""
    source, _, line = (ref.origin or "").rpartition(":")
    return (ref.fields is None, source, int(line) if line.isdigit() else 0)


class ReadInputs(beam.PTransform):
    """Every --input (`input_sources`) -> image entries, row refs and read dead letters. Image
    folders, row files and TFRecord files may be mixed in one job; one keyed step after this
    (`SelectTodo`) keeps one record per key and counts the image entries. `tfrecord`: a
    `transforms.tfrecords.TFRecordSpec` (default: its defaults)."""

    def __init__(self, sources: Sequence[InputSource], spec: RowSpec = RowSpec(),
                 tfrecord=None):
        super().__init__()
        self._images, rows = split_sources(sources)
        self._rows = [(p, f) for p, f in rows if f != TFRECORD]
        self._tfrecords = [p for p, f in rows if f == TFRECORD]
        self._spec = spec
        self._tfrecord = tfrecord

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
            from transforms.tfrecords import ReadTFRecords, TFRecordSpec  # builds on this module
            read = pbegin | "ReadTFRecords" >> ReadTFRecords(
                self._tfrecords, self._tfrecord or TFRecordSpec())
            rows.append(read.refs)
            failed.append(read.failed)
        return Outputs(images | "Images" >> beam.Flatten(pipeline=p),
                       rows | "Rows" >> beam.Flatten(pipeline=p),
                       failed | "Failed" >> beam.Flatten(pipeline=p))
