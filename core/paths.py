"""The names of the files a run reads and writes, in one place: glob quoting (Beam reads paths
as patterns), output templates with `{date}`/`{run_id}`, shard and part names and the
patterns and regular expressions that find them again (docs/outputs.md)."""
import re

GLOB_CHARS = frozenset("*?[")


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


_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
# Committed parts (transforms.commit): `<output>-<run_id>.parts/part-<writer>-<seq>.<ext>`.
PARTS_SUFFIX = ".parts"
PREDICTION_PART_EXTENSION = "parquet.part"
DEAD_LETTER_PART_EXTENSION = "jsonl.part"
PART_NAME_PATTERN = r"part-[0-9a-f]+-[0-9]{5,}\."

# new_run_id(): `YYYYMMDDThhmmssZ-` and hex.
RUN_ID_PATTERN = r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]+"
_PLACEHOLDER_PATTERNS = {"date": r"[0-9]{4}-[0-9]{2}-[0-9]{2}", "run_id": RUN_ID_PATTERN}


def render_path(template: str, date: str, run_id: str) -> str:
    """`template` with `{date}` and `{run_id}` filled in; ValueError for another `{name}`."""
    values = {"date": date, "run_id": run_id}

    def fill(match):
        name = match.group(1)
        if name not in values:
            raise ValueError(f"unknown placeholder {{{name}}} in {template!r}; "
                             f"use {{date}} or {{run_id}}")
        return values[name]

    return _PLACEHOLDER.sub(fill, template)


def template_glob(template: str) -> str:
    """A glob matching every rendering of `template` (each placeholder becomes `*`; a glob
    character of its own matches only itself)."""
    return _PLACEHOLDER.sub("*", quote_glob(template))


def shard_regex(template: str, extension: str) -> str:
    """A regex for the full path of every prediction shard any run of `template` wrote.

    `<output>-<run_id>-SSSSS-of-NNNNN.<ext>`: the run id right after the prefix keeps out the
    dead letters (`<output>-errors-<run_id>-...`) and any other prefix that starts alike.
    """
    return ("^" + template_regex(template) + "-" + RUN_ID_PATTERN
            + r"-[0-9]{5,}-of-[0-9]{5,}\." + re.escape(extension) + "$")


def template_regex(template: str) -> str:
    """A regex (no anchors) for every rendering of `template`."""
    parts = []
    last = 0
    for match in _PLACEHOLDER.finditer(template):
        parts.append(re.escape(template[last:match.start()]))
        parts.append(_PLACEHOLDER_PATTERNS.get(match.group(1), "[^/]*"))
        last = match.end()
    parts.append(re.escape(template[last:]))
    return "".join(parts)


def parts_regex(template: str, extension: str = PREDICTION_PART_EXTENSION) -> str:
    """A regex for every committed part of any run of `template` (see transforms.commit);
    group 1 is the run's parts folder, group 2 its run id."""
    return ("^(" + template_regex(template) + "-(" + RUN_ID_PATTERN + ")"
            + re.escape(PARTS_SUFFIX) + ")/" + PART_NAME_PATTERN + re.escape(extension) + "$")


def parts_glob(template: str, extension: str = PREDICTION_PART_EXTENSION) -> str:
    """The glob that lists candidate parts (filtered by `parts_regex`)."""
    return f"{template_glob(template)}-*{PARTS_SUFFIX}/part-*.{extension}"


def shard_glob(template: str, extension: str) -> str:
    """The glob that lists candidate prediction shards (filtered by `shard_regex`)."""
    return f"{template_glob(template)}-*-of-*.{extension}"


def parts_dir(run_prefix: str) -> str:
    """The parts folder of one run's outputs (`<output>-<run_id>.parts`)."""
    return run_prefix + PARTS_SUFFIX


def part_path(folder: str, writer: str, seq: int, extension: str) -> str:
    return f"{folder}/part-{writer}-{seq:05d}.{extension}"


def dead_letter_glob(prefix: str) -> str:
    """Every dead-letter shard under a `--retry_dead_letters` prefix, from any run."""
    return f"{quote_glob(prefix)}-*.jsonl"
