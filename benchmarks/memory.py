"""Peak memory of a DirectRunner job as it grows: 5,000 vs 50,000 small images.

    python benchmarks/memory.py                       # 5000 and 50000 images
    python benchmarks/memory.py --counts 2000 20000 --output_format jsonl

Writes tiny labelled images (8x8 by default) under --workdir, starts the project's local
prediction server with no latency, then runs `python -m pipeline.run` on each image set in
its own subprocess, which reports its own peak RSS (VmHWM) as it exits.
Prints the figures and the ratio largest / smallest; the target is <= 1.3.

Flat memory holds because only ImageRefs (a URI and a size) cross the job's one shuffle;
the bytes are read, encoded, packed and sent inside one fused stage, image by image.
"""
import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from localserver import LocalServer  # noqa: E402
from localserver.demo import LABEL_COLOURS, color_image  # noqa: E402

TARGET_RATIO = 1.3
PER_FOLDER = 1000


def write_images(folder: str, count: int, side: int) -> float:
    """`count` small JPEGs in sub-folders of PER_FOLDER; returns seconds taken."""
    started = time.monotonic()
    labels = list(LABEL_COLOURS)
    variants = []
    for i, label in enumerate(labels):
        buf = io.BytesIO()
        color_image(label, (side, side), seed=i).save(buf, "JPEG", quality=90)
        variants.append((label, buf.getvalue()))
    for i in range(count):
        label, data = variants[i % len(variants)]
        sub = os.path.join(folder, f"part{i // PER_FOLDER:04d}")
        if i % PER_FOLDER == 0:
            os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"{label}_{i:06d}.jpg"), "wb") as f:
            f.write(data)
    return time.monotonic() - started


# The job reports its own peak, VmHWM of its address space, as it exits. `ru_maxrss` from
# wait4 would also count the resident size of this process at the fork: Linux carries the
# larger of the two across exec, so a benchmark holding a few hundred MB hid the job's figure.
PEAK_LINE = "peak_rss_kb "
RUN_REPORTING_PEAK = (
    "import atexit, runpy, sys\n"
    "def peak():\n"
    "    with open('/proc/self/status') as f:\n"
    "        kb = next(int(l.split()[1]) for l in f if l.startswith('VmHWM:'))\n"
    f"    sys.stderr.write('{PEAK_LINE}%d\\n' % kb)\n"
    "atexit.register(peak)\n"
    "runpy.run_module('pipeline.run', run_name='__main__', alter_sys=True)\n")


def measure(folder: str, output: str, endpoint: str, extra) -> dict:
    """Run one job in a subprocess; its peak RSS (MiB), wall time and summary."""
    command = [sys.executable, "-c", RUN_REPORTING_PEAK, "--input", folder, "--endpoint",
               endpoint, "--output", output, *extra]
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"job failed with exit status {done.returncode}: {command}")
    peak_kb = next(int(line[len(PEAK_LINE):]) for line in done.stderr.splitlines()
                   if line.startswith(PEAK_LINE))
    summary = json.loads(done.stdout)
    return {"peak_rss_mib": peak_kb / 1024, "wall_s": elapsed, "summary": summary}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[5000, 50000])
    parser.add_argument("--side", type=int, default=8, help="image width and height")
    parser.add_argument("--workdir", default=None, help="default: a temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the images and outputs")
    args, extra = parser.parse_known_args(argv)

    workdir = args.workdir or tempfile.mkdtemp(prefix="bp-memory-")
    results = []
    try:
        with LocalServer(latency_ms=0, capacity=64) as server:
            for count in args.counts:
                folder = os.path.join(workdir, f"images-{count}")
                if not os.path.isdir(folder):
                    made = write_images(folder, count, args.side)
                    print(f"wrote {count} images of {args.side}x{args.side} in {made:.1f} s",
                          file=sys.stderr)
                result = measure(folder, os.path.join(workdir, f"out-{count}", "p"),
                                 server.endpoint("mlengine"), extra)
                summary = result["summary"]
                if summary["predicted"] != count or not summary["accounted"]:
                    raise RuntimeError(f"{count} images: unexpected summary {summary}")
                results.append((count, result))
                print(f"{count:>7} images: peak RSS {result['peak_rss_mib']:7.1f} MiB, "
                      f"{result['wall_s']:6.1f} s, {summary['images_per_s']} images/s, "
                      f"{summary['requests']} requests", file=sys.stderr)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    smallest, largest = results[0], results[-1]
    ratio = largest[1]["peak_rss_mib"] / smallest[1]["peak_rss_mib"]
    report = {
        "images": {str(c): {"peak_rss_mib": round(r["peak_rss_mib"], 1),
                            "wall_s": round(r["wall_s"], 1),
                            "images_per_s": r["summary"]["images_per_s"]}
                   for c, r in results},
        "ratio": round(ratio, 3),
        "target": TARGET_RATIO,
        "within_target": ratio <= TARGET_RATIO,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
