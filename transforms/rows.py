"""ReadRows: CSV and JSONL files whose rows name an image (`--uri_field`) or carry it inline
as base64 (`--b64_field`), and file lists (one URI per line), each streamed in one pass. Every
row counts once in `inputs`; a bad row is a `read` dead letter naming its file and line."""
import csv
import json
import os
import posixpath
from typing import Any, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from core.records import ImageRef, is_unicode, SkipReason, Stage
from transforms import metrics
from transforms.failures import FAILED, failure, skip
from transforms.listing import list_pattern, MatchedEntry, open_path


def match_row_files(pattern: str) -> Iterator[Tuple[str, Any]]:
    """(key, MatchedEntry) for every row file the pattern matches."""
    return list_pattern(pattern)


def first_listing(listings: Iterable[MatchedEntry]) -> Optional[tuple]:
    """The first of several listings of one row file (several --input patterns may overlap)."""
    return next(iter(listings), None)


class Rows(NamedTuple):
    """What ReadRows produces: an ImageRef per row, and read dead letters."""
    refs: beam.PCollection
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


def unopened(source: str, listed: MatchedEntry,
             counts: Optional[metrics.BundleCounts] = None):
    """A listed file of records that is not read, counted as one input: a `read` dead letter
    when it is not a regular file or its folder could not be listed, else a skip."""
    if counts is None:
        metrics.counter("inputs").inc()
    else:
        counts.inc("inputs")
    if listed.reason == SkipReason.NOT_REGULAR_FILE:
        yield failure(source, Stage.READ, f"{source}: not a regular file (a FIFO, socket or "
                                          f"device): never opened", counts)
    elif listed.reason is None:
        yield failure(source, Stage.READ, listed.error, counts)
    else:
        skip(listed.reason, counts)


class _ParseRowsFn(beam.DoFn):
    """A listed row file -> ImageRef per row, streamed; bad rows are failed. A row file that
    is not a regular file is never opened."""

    def __init__(self, fmt: str, spec: RowSpec):
        self._fmt = fmt
        self._spec = spec

    def process(self, match):
        source, listed = match
        if not listed.readable:
            yield from unopened(source, listed)
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
                        yield failure(f"{source}:{line}", Stage.READ, str(ref))
        except Exception as e:
            if line:  # rows were already emitted: fail the bundle so the runner retries it
                raise
            metrics.counter("inputs").inc()  # the file could not be opened: one record for it
            yield failure(source, Stage.READ,
                          f"{source}: cannot read rows: {type(e).__name__}: {e}")


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
                      | f"{name}Dedupe" >> beam.CombinePerKey(first_listing)
                      | f"{name}Parse" >> beam.ParDo(_ParseRowsFn(fmt, self._spec))
                      .with_outputs(FAILED, main="refs"))
            refs.append(parsed.refs)
            failed.append(parsed.failed)
        return Rows(refs | "Refs" >> beam.Flatten(pipeline=pbegin.pipeline),
                    failed | "Failed" >> beam.Flatten(pipeline=pbegin.pipeline))


ROW_FORMATS = ("csv", "jsonl", "filelist")
