"""Embedding jobs: Parquet bytes per image, peak memory as the job grows, and speed against
the same job writing labels only.

    python benchmarks/embeddings.py                          # 10,000 and 100,000 images
    python benchmarks/embeddings.py --counts 10000 30000     # a shorter run

Writes tiny JPEGs (8x8) under --workdir (benchmarks/memory.py's `write_images`), starts the
project's local server twice: `--constant_embedding 1280` (every answer one fixed 1,280-float
vector: no image decoded, no model run) and the colour model (labels only, equally cheap).
Each job runs `python -m pipeline.run --protocol v2 --binary_data` (or, with `--protocol
mlengine`, ML Engine JSON with `--embedding_field embedding`) in its own subprocess (peak RSS
from its rusage, as benchmarks/memory.py measures it). Reports, for each count:

- Parquet bytes per image of the embedding job's shards, against the target
  1.1 x 4 x 1280 + the key's length. The constant vector is the same in every row, which
  Parquet's dictionary encoding stores once; so the script also writes the same rows with
  random float32 vectors (what a real model answers) through the pipeline's own Parquet
  settings and reports their bytes per image, the figure the target is about;
- peak RSS of the embedding job, and the ratio largest / smallest count (target <= 1.3);
- images per second of the embedding job over the labels-only job of the same images
  (target >= 0.8).
"""
import argparse
import glob
import io
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.memory import measure, write_images  # noqa: E402
from core.records import prediction_record, prediction_schema, utc_now  # noqa: E402
from localserver import LocalServer  # noqa: E402
from transforms.write import PARQUET_CODEC  # noqa: E402

WIDTH = 1280
TARGET_BYTES_FACTOR = 1.1
TARGET_RSS_RATIO = 1.3
TARGET_SPEED_RATIO = 0.8
RANDOM_ROWS = 10_000
JOB_FLAGS = ("--max_instances_per_request", "32", "--output_format", "parquet")
# Per --protocol: the flags of the embedding job and of the labels-only job.
PROTOCOL_FLAGS = {
    "v2": (("--protocol", "v2", "--binary_data"), ("--protocol", "v2", "--binary_data")),
    "mlengine": (("--protocol", "mlengine", "--embedding_field", "embedding"),
                 ("--protocol", "mlengine")),
}


def parquet_bytes(prefix: str) -> int:
    return sum(os.path.getsize(p) for p in glob.glob(f"{prefix}-*.parquet"))


def key_length(folder: str) -> int:
    """The mean length of a key (an absolute path) in bytes."""
    paths = glob.glob(os.path.join(folder, "*", "*.jpg"))
    return round(sum(len(os.path.abspath(p).encode()) for p in paths) / len(paths))


def random_vectors_bytes_per_image(folder: str, rows: int = RANDOM_ROWS) -> float:
    """Bytes per image of Parquet rows like the job's, with random vectors instead of the
    constant one, written with the pipeline's Parquet settings (one row group)."""
    paths = sorted(glob.glob(os.path.join(folder, "*", "*.jpg")))[:rows]
    rng = np.random.default_rng(0)
    now = utc_now()
    records = [prediction_record(os.path.abspath(p), [], "efficientnet", now,
                                 embedding=rng.standard_normal(WIDTH).astype(np.float32))
               for p in paths]
    buffer = io.BytesIO()
    table = pa.Table.from_pylist(records, schema=prediction_schema())
    pq.write_table(table, buffer, compression=PARQUET_CODEC, use_compliant_nested_type=True)
    return len(buffer.getvalue()) / len(records)


def run_jobs(server: LocalServer, folder: str, out: str, protocol: str, flags) -> dict:
    result = measure(folder, out, server.endpoint(protocol), [*JOB_FLAGS, *flags])
    summary = result["summary"]
    if not summary["accounted"] or summary["failed"]:
        raise RuntimeError(f"unexpected summary {summary}")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--workdir", default=None, help="default: a temporary folder")
    parser.add_argument("--protocol", default="v2", choices=sorted(PROTOCOL_FLAGS),
                        help="v2 (binary tensors) or mlengine (JSON, the vector as numbers)")
    args, extra = parser.parse_known_args(argv)
    vector_flags, label_flags = PROTOCOL_FLAGS[args.protocol]
    workdir = args.workdir or tempfile.mkdtemp(prefix="bp-embeddings-")
    figures = {}
    try:
        for count in args.counts:
            folder = os.path.join(workdir, f"images-{count}")
            if not os.path.isdir(folder):
                write_images(folder, count, 8)
            out = os.path.join(workdir, f"out-{count}")
            shutil.rmtree(out, ignore_errors=True)  # this run's shards only
            with LocalServer(constant_embedding=WIDTH, latency_ms=0, capacity=64) as server:
                vectors = run_jobs(server, folder, os.path.join(out, "emb"), args.protocol,
                                   [*vector_flags, *extra])
            with LocalServer(latency_ms=0, capacity=64) as server:
                labels = run_jobs(server, folder, os.path.join(out, "labels"), args.protocol,
                                  [*label_flags, *extra])
            key = key_length(folder)
            stored = parquet_bytes(os.path.join(out, "emb")) / count
            figures[count] = {
                "peak_rss_mib": round(vectors["peak_rss_mib"], 1),
                "labels_peak_rss_mib": round(labels["peak_rss_mib"], 1),
                "images_per_s": vectors["summary"]["images_per_s"],
                "labels_images_per_s": labels["summary"]["images_per_s"],
                "speed_ratio": round(vectors["summary"]["images_per_s"]
                                     / labels["summary"]["images_per_s"], 3),
                "parquet_bytes_per_image_constant": round(stored, 1),
                "parquet_bytes_per_image_random": round(
                    random_vectors_bytes_per_image(folder), 1),
                "target_bytes_per_image": round(TARGET_BYTES_FACTOR * 4 * WIDTH + key, 1),
            }
            print(f"{count}: {json.dumps(figures[count])}", file=sys.stderr)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    counts = sorted(figures)
    ratio = figures[counts[-1]]["peak_rss_mib"] / figures[counts[0]]["peak_rss_mib"]
    report = {"images": figures, "rss_ratio": round(ratio, 3),
              "targets": {"rss_ratio": TARGET_RSS_RATIO, "speed_ratio": TARGET_SPEED_RATIO,
                          "bytes_factor": TARGET_BYTES_FACTOR}}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
