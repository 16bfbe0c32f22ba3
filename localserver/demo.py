"""Demo and test images whose correct label is known: `python -m localserver.demo DIR [N]`.

Real photos (`photos/`, from scikit-image's data, CC0 or public domain:
localserver/photos/SOURCES.md) are what EfficientNet-Lite0 labels; the demo set also holds
copies of them in a mix of formats and sizes (`cat_03.webp`), and synthetic images, each a
mid-tone of one of the colour model's label colours with mild noise (`red_0007.jpg`: the label
is the first part of the file name). A third of the copies are in a sub-folder. One
deliberately corrupt file (`corrupt.jpg`) shows the dead letters. Existing demo sets are left
as they are, but get the photos if they lack them.

After a run, `--show RUN_PREFIX` prints the photos' top labels, and `--nearest RUN_PREFIX` each
photo's nearest other images by the cosine similarity of the run's `embedding` column
(`./run_local.sh --embeddings`).
"""
import os
import random
import shutil
import sys
from typing import Dict, Tuple

from PIL import Image

# A colour that the local model classifies as each label (not the pure prototype).
LABEL_COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (205, 35, 30),
    "green": (30, 190, 45),
    "blue": (35, 40, 200),
    "yellow": (215, 210, 40),
    "cyan": (40, 205, 210),
    "magenta": (200, 40, 205),
    "white": (238, 236, 240),
    "black": (18, 20, 22),
}
FORMATS = (("jpg", "JPEG"), ("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP"))
PHOTOS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "photos")
# Each demo photo's ImageNet classes, any of which in the top 5 is right.
PHOTO_CLASSES: Dict[str, Tuple[str, ...]] = {
    "cat.jpg": ("tabby cat", "tiger cat", "Egyptian Mau"),
    "coffee.jpg": ("espresso", "coffee mug", "tea cup"),
    "rocket.jpg": ("missile", "projectile", "space shuttle"),
    "camera.jpg": ("tripod", "reflex camera"),
}


def color_image(label: str, size=(96, 64), seed: int = 0, mode: str = "RGB") -> Image.Image:
    """An image of `label`'s colour with mild deterministic noise."""
    rng = random.Random(seed)
    r, g, b = LABEL_COLOURS[label]
    img = Image.new("RGB", size, (r, g, b))
    pixels = img.load()
    for _ in range(size[0] * size[1] // 8):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        jitter = rng.randint(-20, 20)
        pixels[x, y] = tuple(max(0, min(255, c + jitter)) for c in (r, g, b))
    return img.convert(mode) if mode != "RGB" else img


def write_image(path: str, label: str, seed: int = 0, size=(96, 64), fmt: str = None,
                **save_args) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    img = color_image(label, size, seed)
    img.save(path, fmt, **save_args)
    return path


def copy_photos(folder: str) -> int:
    """Copy the demo photos into `folder`/photos unless it exists; returns how many."""
    target = os.path.join(folder, "photos")
    if os.path.isdir(target):
        return 0
    os.makedirs(target)
    for name in PHOTO_CLASSES:
        shutil.copyfile(os.path.join(PHOTOS_DIR, name), os.path.join(target, name))
    return len(PHOTO_CLASSES)


def demo_folder(folder: str, i: int) -> str:
    return os.path.join(folder, "batch_b") if i % 3 == 0 else folder


def write_photo_copies(folder: str, count: int) -> int:
    """`count` copies of the demo photos, in turn, each in the next format, every other one
    at half size."""
    photos = list(PHOTO_CLASSES)
    for i in range(count):
        name = photos[i % len(photos)]
        ext, fmt = FORMATS[i // len(photos) % len(FORMATS)]
        with Image.open(os.path.join(PHOTOS_DIR, name)) as photo:
            img = photo.convert("RGB")
        if i // (len(photos) * len(FORMATS)) % 2:
            img = img.resize((img.width // 2, img.height // 2))
        path = os.path.join(demo_folder(folder, i), f"{name.split('.')[0]}_{i:02d}.{ext}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        img.save(path, fmt)
    return count


def make_demo_set(folder: str, count: int = 48) -> int:
    """Write `count` images into an empty `folder`: two thirds copies of the demo photos, a
    third colour images; plus the photos themselves and one corrupt file."""
    photo_copies = count * 2 // 3
    labels = list(LABEL_COLOURS)
    for i in range(count - photo_copies):
        label = labels[i % len(labels)]
        ext, fmt = FORMATS[i % len(FORMATS)]
        write_image(os.path.join(demo_folder(folder, i), f"{label}_{i:04d}.{ext}"), label,
                    seed=i, size=(64 + 8 * (i % 5), 48 + 8 * (i % 4)), fmt=fmt)
    write_photo_copies(folder, photo_copies)
    with open(os.path.join(folder, "corrupt.jpg"), "wb") as f:
        f.write(b"this is not a JPEG")
    return count + 1 + copy_photos(folder)


def make_demo_set_whole(folder: str, count: int = 48) -> int:
    """`make_demo_set` into `<folder>.partial`, renamed to `folder` once complete: a set whose
    making was interrupted is made again next time, never taken for the whole set."""
    partial = folder.rstrip("/") + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    written = make_demo_set(partial, count)
    if os.path.isdir(folder):
        os.rmdir(folder)  # empty, or it would have been used
    os.rename(partial, folder)
    return written


def show_photos(run_prefix: str) -> int:
    """Print the demo photos' top label and score from a run's prediction files."""
    from pipeline.run_files import prediction_rows  # pylint: disable=import-outside-toplevel
    rows = [r for r in prediction_rows(run_prefix) if is_demo_photo(r["key"])]
    if rows:
        print("demo photos (localserver/photos/SOURCES.md), top label and score:")
    for row in sorted(rows, key=lambda r: r["key"]):
        print(f"  {os.path.basename(row['key']):<12} {row['top_label']} ({row['top_score']:.2f})")
    return 0


def is_demo_photo(key: str) -> bool:
    return (os.path.basename(key) in PHOTO_CLASSES
            and os.path.basename(os.path.dirname(key)) == "photos")


def run_embeddings(run_prefix: str):
    """(keys, float32 vectors [n, d]) of the rows of a run's prediction files that have an
    `embedding` (Parquet `list<float32>`, or JSON numbers in JSONL)."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    # pylint: disable-next=import-outside-toplevel
    from pipeline.run_files import find_run, prediction_batches
    keys, vectors = [], []
    for batch in prediction_batches(find_run(run_prefix).predictions):
        if "embedding" not in batch.schema.names:
            continue
        for key, vector in zip(batch.column("key").to_pylist(),
                               batch.column("embedding").to_pylist()):
            if vector:
                keys.append(key)
                vectors.append(vector)
    return keys, np.asarray(vectors, dtype=np.float32).reshape(len(keys), -1 if keys else 0)


def nearest_images(run_prefix: str, count: int = 3):
    """{demo photo's key: [(other key, cosine similarity)], most similar first}, by the
    run's embeddings."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    from pipeline.vectors import unit_rows  # pylint: disable=import-outside-toplevel
    keys, vectors = run_embeddings(run_prefix)
    unit = unit_rows(vectors)
    found = {}
    for i, key in enumerate(keys):
        if not is_demo_photo(key):
            continue
        cosine = unit @ unit[i]
        cosine[i] = -np.inf  # not itself
        order = np.argsort(-cosine, kind="stable")[:count]
        found[key] = [(keys[j], float(cosine[j])) for j in order if np.isfinite(cosine[j])]
    return found


def show_nearest(run_prefix: str) -> int:
    """Print each demo photo's nearest other images by cosine similarity of embeddings."""
    found = nearest_images(run_prefix)
    if not found:
        print("demo photos: no embeddings in the run's outputs (was the model serving "
              "embeddings, and --embedding_field given?)")
        return 1
    print("demo photos, nearest other images by cosine similarity of their embeddings:")
    root = os.path.dirname(os.path.dirname(next(iter(found))))
    for key in sorted(found):
        near = ", ".join(f"{os.path.relpath(other, root)} ({cosine:.3f})"
                         for other, cosine in found[key])
        print(f"  {os.path.basename(key):<12} {near}")
    return 0


SHOWN = 20  # images whose top label `show_top` prints


def show_top(run_prefix: str, shown: int = SHOWN) -> int:
    """Print the top label and score of a run's first `shown` images by key."""
    from pipeline.run_files import prediction_rows  # pylint: disable=import-outside-toplevel
    rows = sorted(prediction_rows(run_prefix), key=lambda r: r["key"])
    if not rows:
        return 0
    folder = os.path.dirname(os.path.commonprefix([r["key"] for r in rows]))
    more = f" (the first {shown} of {len(rows)} by name)" if len(rows) > shown else ""
    print(f"top label and score{more}:")
    for row in rows[:shown]:
        name = os.path.relpath(row["key"], folder) if folder else row["key"]
        score = "" if row["top_score"] is None else f" ({row['top_score']:.2f})"
        print(f"  {name:<24} {row['top_label']}{score}")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "--show":
        return show_photos(argv[1])
    if len(argv) == 2 and argv[0] == "--nearest":
        return show_nearest(argv[1])
    if len(argv) == 2 and argv[0] == "--show_top":
        return show_top(argv[1])
    if not argv:
        print("usage: python -m localserver.demo DIR [COUNT]  |  --show RUN_PREFIX  |  "
              "--show_top RUN_PREFIX  |  --nearest RUN_PREFIX", file=sys.stderr)
        return 2
    folder, count = argv[0], int(argv[1]) if len(argv) > 1 else 48
    if os.path.isdir(folder) and os.listdir(folder):
        added = copy_photos(folder)
        print(f"demo: using the images in {folder}"
              + (f" (added {added} photos)" if added else ""), file=sys.stderr)
        return 0
    written = make_demo_set_whole(folder, count)
    print(f"demo: wrote {written} files to {folder} ({count} images, "
          f"{len(PHOTO_CLASSES)} photos, 1 corrupt)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
