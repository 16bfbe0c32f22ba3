"""`--protocol v2` throughput: JSON (base64 image files) against the binary tensor data
extension (raw image files), same images, same run, against the project's local server;
then the same JSON requests against real KServe and MLServer when their test virtualenvs
are installed (`python3 tests/servers.py`). Prints bytes per image and img/s.

    python benchmarks/v2.py [--images 4000] [--size 320x240] [--repeats 3]

The runs alternate JSON/binary and the median is shown: the servers share the machine's
cores with the pipeline.
"""
import argparse
import glob
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from localserver import LocalServer  # noqa: E402
from localserver.demo import LABEL_COLOURS, write_image  # noqa: E402
from pipeline.run import run  # noqa: E402
from tests.servers import REQUIREMENTS, kserve_server, mlserver_server  # noqa: E402

PER_REQUEST = 16
CONCURRENCY = 8
FLAGS = {"json": [], "binary": ["--binary_data"]}


def make_images(folder: str, count: int, size) -> list:
    labels = list(LABEL_COLOURS)
    os.makedirs(folder, exist_ok=True)
    for i in range(len(glob.glob(os.path.join(folder, "*.jpg"))), count):
        write_image(os.path.join(folder, f"{labels[i % len(labels)]}_{i:05d}.jpg"),
                    labels[i % len(labels)], seed=i, size=size)
    return sorted(glob.glob(os.path.join(folder, "*.jpg")))[:count]


def job(folder: str, endpoint: str, out: str, *flags) -> dict:
    started = time.monotonic()
    summary = run(["--input", folder, "--endpoint", endpoint, "--protocol", "v2",
                   "--output", out, "--max_instances_per_request", str(PER_REQUEST),
                   "--max_concurrent_requests", str(CONCURRENCY), *flags])
    wall = time.monotonic() - started
    assert summary["accounted"] and summary["failed"] == 0, summary
    return {"images": summary["predicted"], "rate": summary["predicted"] / wall}


def local_rows(folder: str, out: str, repeats: int) -> dict:
    runs = {name: [] for name in FLAGS}
    with LocalServer(capacity=64) as server:
        for _ in range(repeats):
            for name, flags in FLAGS.items():
                server.reset_stats()
                figures = job(folder, server.endpoint("v2"), os.path.join(out, name), *flags)
                stats = server.stats()
                figures["bytes"] = stats["request_bytes"] / stats["instances"]
                runs[name].append(figures)
    return runs


def show(name: str, runs: list):
    rate = statistics.median(r["rate"] for r in runs)
    line = f"  {name:<28} {runs[0]['images']:>5} images  {rate:7.1f} img/s"
    if "bytes" in runs[0]:
        line += f"  {runs[0]['bytes']:9.0f} bytes/image"
    print(line + "  (runs: " + " ".join(f"{r['rate']:.0f}" for r in runs) + ")", flush=True)


def installed(name: str) -> bool:
    venvs = os.environ.get("BATCH_PREDICT_SERVER_VENVS",
                           os.path.join(os.path.dirname(os.path.dirname(
                               os.path.abspath(__file__))), ".venv-servers"))
    return bool(glob.glob(os.path.join(venvs, name, ".installed-*")))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=None, help="keeps the images between runs")
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x"))
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-v2-")
    folder = os.path.join(workdir, f"images-{args.size}")
    paths = make_images(folder, args.images, size)
    mean_file = sum(os.path.getsize(p) for p in paths) / len(paths)
    out = os.path.join(workdir, "out")
    print(f"v2 against the local server: {len(paths)} JPEGs of {args.size} "
          f"(mean file {mean_file:.0f} bytes), {PER_REQUEST} per request, "
          f"{CONCURRENCY} in flight; median of {args.repeats}")
    runs = local_rows(folder, out, args.repeats)
    for name in FLAGS:
        show(f"v2 {name}", runs[name])
    for name, start in (("kserve", kserve_server), ("mlserver", None)):
        if name not in REQUIREMENTS or not installed(name):
            continue
        if start is None:
            server = mlserver_server(tempfile.mkdtemp(prefix="mlserver-"))
        else:
            server = start()
        with server:
            rows = [job(folder, server.url + "/v2/models/colour/infer",
                        os.path.join(out, name)) for _ in range(args.repeats)]
        show(f"{name} v2 json", rows)


if __name__ == "__main__":
    main()
