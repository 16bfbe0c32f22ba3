"""Listing what a pattern matches, without reading any file: local paths by this module's own
walk (Beam's local filesystem cannot tell a link or a FIFO from a file, nor take a folder
whose name holds glob characters literally), `gs://` and other remote paths through Beam's
FileSystems. docs/inputs-odd-files.md gives the rules."""
import os
import re
import stat
from typing import Iterator, NamedTuple, Optional, Tuple

from apache_beam.io.filesystem import FileSystem
from apache_beam.io.filesystems import FileSystems

from core.paths import is_glob_part, quote_glob, unquote_glob
from core.records import SkipReason


class MatchedEntry(NamedTuple):
    """One entry a pattern matched. `reason` says why it is skipped; `error`, why a folder
    could not be listed (a `read` dead letter); `raw` holds a local path's bytes when its
    key had to be escaped, so the file can still be opened."""
    size: Optional[int]
    reason: Optional[SkipReason] = None
    raw: Optional[bytes] = None
    error: Optional[str] = None

    @property
    def readable(self) -> bool:
        return self.reason is None and self.error is None


def glob_root(pattern: str) -> str:
    """The fixed part of a pattern (quoted glob characters unquoted): the folder the glob
    starts from, or the path itself when the pattern holds no glob."""
    parts = pattern.split("/")
    for i, part in enumerate(parts):
        if is_glob_part(part):
            return "/".join(unquote_glob(p) for p in parts[:i])
    return "/".join(unquote_glob(p) for p in parts)


def entry_kind(mode: int) -> Optional[SkipReason]:
    """None for a regular file; else why it is never opened."""
    if stat.S_ISLNK(mode):
        return SkipReason.SYMLINK
    return None if stat.S_ISREG(mode) else SkipReason.NOT_REGULAR_FILE


def walk_folder(root: str) -> Iterator[Tuple[str, MatchedEntry]]:
    """Every entry under a local folder, in name order. Links found here are not followed
    (to files and to folders alike); FIFOs, sockets and devices are never opened."""
    folders = [root]
    while folders:
        folder = folders.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            yield folder, MatchedEntry(None, error=f"cannot list folder: {type(e).__name__}")
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
                yield entry.path, MatchedEntry(info.st_size if kind is None else None, kind)
        folders.extend(reversed(subfolders))


def list_local(pattern: str) -> Iterator[Tuple[str, MatchedEntry]]:
    """Local entries a pattern matches (Beam's pattern syntax). A path named without a glob
    is followed when it is a link: the user named it."""
    root = glob_root(pattern)
    if not is_glob_part(pattern):
        try:
            info = os.stat(root)
        except OSError:
            return
        kind = entry_kind(info.st_mode)
        yield root, MatchedEntry(info.st_size if kind is None else None, kind)
        return
    if not os.path.isdir(root):
        return
    rest = pattern[len(quote_glob(root)):] if pattern.startswith(quote_glob(root)) else None
    regex = None if rest == "/**" else re.compile(FileSystem.translate_pattern(pattern))
    for path, listed in walk_folder(root):
        if regex is None or regex.match(path):
            yield path, listed


def list_remote(pattern: str) -> Iterator[Tuple[str, MatchedEntry]]:
    for result in FileSystems.match([pattern]):
        for metadata in result.metadata_list:
            yield metadata.path, MatchedEntry(metadata.size_in_bytes)


def list_pattern(pattern: str) -> Iterator[Tuple[str, MatchedEntry]]:
    """(key, MatchedEntry) for every entry a pattern matches, locally or on any Beam filesystem."""
    entries = list_local(pattern) if "://" not in pattern else list_remote(pattern)
    for path, listed in entries:
        key = escaped_key(path)
        yield key, listed._replace(raw=os.fsencode(path)) if key != path else listed


def first_match(pattern: str) -> Optional[Tuple[str, MatchedEntry]]:
    """The first entry a pattern matches (a launcher-side preflight check), or None."""
    return next(iter(list_pattern(pattern)), None)


def open_path(key: str, listed: MatchedEntry) -> str:
    """The path to open for a listed entry (its raw bytes when its key is escaped)."""
    return os.fsdecode(listed.raw) if listed.raw else key


def escaped_key(path: str) -> str:
    """`path` as valid text: a local file name that is not UTF-8 (undecodable bytes kept as
    surrogates by Python) gets its bytes escaped as `\\xNN`; stable from run to run."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")
