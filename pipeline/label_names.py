"""--label_names / --label_names_file: the class names of a model's score vectors, read and
checked once on the launcher (a file may be local or on `gs://`)."""
import json
from typing import Any, Sequence, Tuple

from apache_beam.io.filesystems import FileSystems

from protocols.labels import class_index


def parse_label_names(text: str, source: str) -> Tuple[str, ...]:
    """Class names from a file's text: a JSON list, a JSON `{"0": name}` map (TorchServe's
    index_to_name.json, values may be `[id, name]`), or one name per line."""
    stripped = text.strip()
    if stripped.startswith(("[", "{")):
        try:
            data = json.loads(stripped)
        except ValueError as e:
            raise ValueError(f"{source} is not valid JSON: {e}")
        names = json_names(data, source)
    else:
        names = [line.strip() for line in stripped.splitlines()]
    return check_label_names(names, source)


def json_names(data: Any, source: str) -> list:
    if isinstance(data, dict):
        indices = sorted(data, key=lambda k: class_index(k) if class_index(k) is not None
                         else -1)
        if [class_index(k) for k in indices] != list(range(len(data))):
            raise ValueError(f"{source}: a JSON object must map 0..N-1 to names")
        data = [data[k][-1] if isinstance(data[k], list) and data[k] else data[k]
                for k in indices]
    if not isinstance(data, list) or not all(isinstance(n, str) for n in data):
        raise ValueError(f"{source}: expected a JSON list of names")
    return data


def check_label_names(names: Sequence[str], source: str) -> Tuple[str, ...]:
    names = tuple(names)
    if not names:
        raise ValueError(f"{source} names no labels")
    for i, name in enumerate(names):
        if not name.strip():
            raise ValueError(f"{source}: label {i} is empty")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{source}: label {repeated[0]!r} is named more than once")
    return names


def load_label_names(path: str) -> Tuple[str, ...]:
    """--label_names_file, local or gs:// (through Beam's FileSystems)."""
    source = f"--label_names_file {path}"
    try:
        with FileSystems.open(path) as f:
            raw = f.read()
    except Exception as e:  # Beam's filesystems raise several types
        raise ValueError(f"cannot read {source}: {str(e).splitlines()[0] if str(e) else e}")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{source} is not UTF-8 text")
    return parse_label_names(text, source)
