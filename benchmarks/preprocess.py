"""Images per second preparing JPEGs as FP32 NCHW 224x224 tensors (crop, bicubic, imagenet):
`imaging.tensor` (`decode_for_tensor` + `to_tensor`) against a bare loop of the same Pillow
decode, resize, centre crop and numpy normalise, without `draft`.

    .venv/bin/python benchmarks/preprocess.py [--small 300] [--large 12] [--repeats 5]

Writes 640x480 and 4000x3000 (12 MP) JPEGs into a temporary folder (the demo photos,
resized, with noise: photo-like content, quality 90), then times each way in its own
process, alternating, `--repeats` times; prints the median images per second of each (by
wall time, and per CPU-second of the process, which a shared machine disturbs less) and the
ratio of each adjacent pair of runs. The bytes are read before the clock starts: the
figures are decode + resize + tensor. Before timing, it checks the two ways agree on 640x480
images (no draft there).
"""
import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from imaging.tensor import decode_for_tensor, tensor_spec, to_tensor  # noqa: E402
from localserver.demo import PHOTO_CLASSES, PHOTOS_DIR  # noqa: E402

SPEC = tensor_spec((224, 224), normalize="imagenet", resize="crop", resample="bicubic",
                   layout="NCHW", dtype="FP32")
MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)
SIZES = {"small": (640, 480), "large": (4000, 3000)}
WORKER_TIMEOUT_S = 900


def bare(data: bytes) -> np.ndarray:
    """Decode, shorter side to 256, centre 224, (x - mean) / std, CHW: as a user's own loop."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    width, height = img.size
    if width < height:
        size = 256, int(256 * height / width)
    else:
        size = int(256 * width / height), 256
    img = img.resize(size, Image.Resampling.BICUBIC)
    left, top = int(round((size[0] - 224) / 2)), int(round((size[1] - 224) / 2))
    img = img.crop((left, top, left + 224, top + 224))
    pixels = (np.asarray(img, np.float32) - MEAN) / STD
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def ours(data: bytes) -> np.ndarray:
    return to_tensor(decode_for_tensor(data, SPEC), SPEC)


WAYS = {"bare": bare, "ours": ours}


def write_jpegs(folder: str, size, count: int) -> None:
    """`count` JPEGs of `size`: the demo photos, each resized to cover it, with noise."""
    rng = np.random.default_rng(0)
    photos = []
    for name in PHOTO_CLASSES:
        with Image.open(os.path.join(PHOTOS_DIR, name)) as img:
            photos.append(img.convert("RGB"))
    for i in range(count):
        img = photos[i % len(photos)]
        scale = max(size[0] / img.width, size[1] / img.height)
        cover = img.resize((round(img.width * scale + 0.5), round(img.height * scale + 0.5)),
                           Image.Resampling.BICUBIC)
        left, top = (cover.width - size[0]) // 2, (cover.height - size[1]) // 2
        pixels = np.asarray(cover.crop((left, top, left + size[0], top + size[1])), np.int16)
        pixels = pixels + rng.normal(0, 6, pixels.shape).astype(np.int16)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            os.path.join(folder, f"{i:05d}.jpg"), "JPEG", quality=90)


def read_all(folder: str):
    blobs = []
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            blobs.append(f.read())
    return blobs


def work(way: str, folder: str) -> dict:
    """One timed pass of `way` over the folder's images (in this process)."""
    prepare = WAYS[way]
    blobs = read_all(folder)
    prepare(blobs[0])  # warm-up: imports, tables
    started, cpu_started = time.perf_counter(), time.process_time()
    for data in blobs:
        tensor = prepare(data)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    assert tensor.shape == (3, 224, 224) and tensor.dtype == np.float32
    return {"images": len(blobs), "seconds": elapsed, "cpu_seconds": cpu}


class Rate(NamedTuple):
    wall: float  # images per second
    cpu: float  # images per CPU-second of the process


def timed(way: str, folder: str) -> Rate:
    """`way`'s rate over the folder, in a process of its own."""
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", way,
                           folder], capture_output=True, text=True, check=True,
                          timeout=WORKER_TIMEOUT_S)
    result = json.loads(done.stdout)
    return Rate(result["images"] / result["seconds"], result["images"] / result["cpu_seconds"])


def check_agreement(folder: str) -> float:
    """The largest difference between the two ways' tensors on the first images."""
    return max(float(np.abs(bare(data) - ours(data)).max())
               for data in read_all(folder)[:8])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=300, help="640x480 JPEGs")
    parser.add_argument("--large", type=int, default=12, help="4000x3000 JPEGs")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--worker", nargs=2, metavar=("WAY", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(work(*args.worker)))
        return 0
    with tempfile.TemporaryDirectory(prefix="preprocess-") as tmp:
        folders = {}
        for kind, count in (("small", args.small), ("large", args.large)):
            folders[kind] = os.path.join(tmp, kind)
            os.makedirs(folders[kind])
            write_jpegs(folders[kind], SIZES[kind], count)
        print(f"640x480: ours and the bare loop differ by at most "
              f"{check_agreement(folders['small']):.2e} (same tensor)")
        rates = {(kind, way): [] for kind in folders for way in WAYS}
        for repeat in range(args.repeats):
            order = list(WAYS) if repeat % 2 == 0 else list(WAYS)[::-1]
            for kind, folder in folders.items():
                for way in order:
                    rates[kind, way].append(timed(way, folder))
        for kind, folder in folders.items():
            width, height = SIZES[kind]
            ours_runs, bare_runs = rates[kind, "ours"], rates[kind, "bare"]
            print(f"{width}x{height}, {len(os.listdir(folder))} JPEGs -> FP32 NCHW 224x224, "
                  f"medians of {args.repeats} runs:")
            for field, unit in (("wall", "img/s"), ("cpu", "img per CPU-s")):
                ours_rate = statistics.median(getattr(r, field) for r in ours_runs)
                bare_rate = statistics.median(getattr(r, field) for r in bare_runs)
                ratios = [getattr(o, field) / getattr(b, field)
                          for o, b in zip(ours_runs, bare_runs)]
                print(f"  {unit}: ours {ours_rate:.1f}, bare loop {bare_rate:.1f}; ratio of "
                      f"each run pair " + " / ".join(f"{r:.2f}" for r in ratios)
                      + f", median {statistics.median(ratios):.2f}")
    print(f"on {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
