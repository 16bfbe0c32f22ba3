"""ReadImages: input patterns -> one ImageRef per image file, without reading any bytes.

Matching goes through Beam's FileSystems (local paths, globs, `gs://`), so the same code lists
a laptop folder and a bucket. Only references (URI, size) travel on from here; the bytes are
read next to the request (EncodeInstances), so memory does not grow with the job.
"""
import os
import posixpath
from typing import Iterable, List, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms import metrics
from transforms.records import ImageRef

SKIPPED = "skipped"
IMAGE_EXTENSIONS = frozenset(
    (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"))
GLOB_CHARS = frozenset("*?[")


def has_glob(path: str) -> bool:
    return any(c in GLOB_CHARS for c in path)


def pattern_for(path: str) -> str:
    """A folder becomes a recursive glob of everything under it; other paths stay as they are."""
    if has_glob(path):
        return path
    if path.startswith("gs://"):
        bucket_only = path.rstrip("/").count("/") == 2
        if path.endswith("/") or bucket_only:
            return path.rstrip("/") + "/**"
        return path
    if os.path.isdir(path):
        return os.path.join(os.path.abspath(path), "**")
    return os.path.abspath(path)


def glob_root(pattern: str) -> str:
    """The fixed part of a pattern: the folder the glob starts from."""
    parts = pattern.split("/")
    for i, part in enumerate(parts):
        if has_glob(part):
            return "/".join(parts[:i])
    return posixpath.dirname(pattern)


def is_image_path(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def is_hidden(path: str, root: str) -> bool:
    """A file whose name, or a folder of whose path below `root`, starts with a dot."""
    relative = path[len(root):] if path.startswith(root) else posixpath.basename(path)
    return any(part.startswith(".") for part in relative.split("/") if part)


def match_pattern(pattern: str) -> Iterable[Tuple[str, int, str]]:
    """(path, size, root) for every file the pattern matches."""
    root = glob_root(pattern)
    for result in FileSystems.match([pattern]):
        for metadata in result.metadata_list:
            yield metadata.path, metadata.size_in_bytes, root


def key_by_path(match: Tuple[str, int, str]):
    return match[0], match


def first(values: Iterable):
    """The first of several matches of one path (several --input patterns may overlap)."""
    return next(iter(values), None)


def classify_file(path: str, size: int, root: str):
    """An ImageRef, or the reason the file is skipped."""
    if is_hidden(path, root):
        return "skipped_hidden"
    if not is_image_path(path):
        return "skipped_not_image"
    return ImageRef(key=path, uri=path, size=size)


class _RefFn(beam.DoFn):
    def process(self, match):
        path, size, root = match
        metrics.counter("inputs").inc()
        ref = classify_file(path, size, root)
        if isinstance(ref, ImageRef):
            yield ref
        else:
            metrics.counter(ref).inc()
            metrics.counter("skipped").inc()
            yield beam.pvalue.TaggedOutput(SKIPPED, (path, ref))


class ReadImages(beam.PTransform):
    """Patterns -> ImageRef per image file (deduplicated), with a `skipped` output."""

    def __init__(self, patterns: List[str]):
        super().__init__()
        self._patterns = list(patterns)

    def expand(self, pbegin):
        return (pbegin
                | "Patterns" >> beam.Create(self._patterns)
                | "Match" >> beam.FlatMap(match_pattern)
                | "KeyByPath" >> beam.Map(key_by_path)
                | "Dedupe" >> beam.CombinePerKey(first)
                | "Files" >> beam.Values()
                | "ToRefs" >> beam.ParDo(_RefFn()).with_outputs(SKIPPED, main="refs"))
