"""Peak memory of a job sending 12 MP JPEGs as FP32 224x224 tensors, and its request bytes.

    .venv/bin/python benchmarks/tensor_memory.py [--images 2000] [--server loopback|kserve]

Writes `--distinct` 4000x3000 JPEGs once into `--cache` (the demo photos resized with noise,
as benchmarks/preprocess.py makes them: photo-like content, quality 90) and hard-links them
up to `--images` files. Then runs `python -m pipeline.run` in its own subprocess with
`--protocol v2 --instance_format tensor --resize crop --resample bicubic --normalize imagenet
--tensor_layout NCHW --tensor_dtype FP32 --binary_data --max_concurrent_requests 16` and
reads that process's peak RSS from `os.wait4` (target: under 1 GB).

The server takes FP32 [-1, 3, 224, 224]: `loopback` (default) is a small v2 server in this
process that checks each request's tensor (datatype, shape, binary size), counts its bytes and
answers a constant FP32 [n, 1000] score tensor; `kserve` is the raw EfficientNet-Lite0 model
behind KServe of tests/servers.py (onnxruntime on the CPU: the job is paced by it). Prints the
peak RSS, the job's time and the request bytes per image (the body; target at most
4 x 224 x 224 x 3 plus the header).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from memory import PEAK_LINE, RUN_REPORTING_PEAK  # noqa: E402
from preprocess import write_jpegs  # noqa: E402

MODEL = "efficientnet_lite0"
SHAPE = [3, 224, 224]
PIXEL_BYTES = 4 * 224 * 224 * 3
CLASSES = 1000
TARGET_MIB = 1000
JOB_TIMEOUT_S = 3600
HEADER = "Inference-Header-Content-Length"
METADATA = {"name": MODEL, "platform": "loopback", "versions": ["1"],
            "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, *SHAPE]}],
            "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, CLASSES]}]}
ROW = ",".join(["0.001"] * CLASSES)


class Traffic(NamedTuple):
    requests: int
    images: int
    body_bytes: int
    header_bytes: int
    refused: int


def photo_folder(cache: str, images: int, distinct: int) -> str:
    """`images` hard links, cycling over `distinct` 12 MP JPEGs written once into `cache`."""
    sources = os.path.join(cache, f"distinct-{distinct}")
    if not os.path.isdir(sources):
        started = time.monotonic()
        os.makedirs(sources + ".tmp", exist_ok=True)
        write_jpegs(sources + ".tmp", (4000, 3000), distinct)
        os.rename(sources + ".tmp", sources)
        print(f"wrote {distinct} JPEGs of 4000x3000 in {time.monotonic() - started:.0f} s",
              file=sys.stderr)
    names = sorted(os.listdir(sources))
    folder = os.path.join(cache, f"images-{images}-of-{distinct}")
    if not os.path.isdir(folder):
        os.makedirs(folder + ".tmp", exist_ok=True)
        for i in range(images):
            os.link(os.path.join(sources, names[i % len(names)]),
                    os.path.join(folder + ".tmp", f"{i:05d}.jpg"))
        os.rename(folder + ".tmp", folder)
    return folder


def check_tensor(header: dict, tail: bytes) -> int:
    """The request's image count; ValueError unless it is one FP32 [n, 3, 224, 224] tensor."""
    (tensor,) = header["inputs"]
    count, *shape = tensor["shape"]
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if tensor["datatype"] != "FP32" or shape != SHAPE or size != len(tail) \
            or len(tail) != count * PIXEL_BYTES:
        raise ValueError(f"not FP32 [n, 3, 224, 224]: {tensor}, {len(tail)} bytes")
    return count


def loopback_handler(counts: dict, lock: threading.Lock):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def answer(self, status: int, payload: dict):
            body = json.dumps(payload).encode() if not isinstance(payload, bytes) else payload
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            base = f"/v2/models/{MODEL}"
            if self.path in ("/v2/health/ready", base + "/ready"):
                self.answer(200, {"ready": True})
            elif self.path == base:
                self.answer(200, METADATA)
            else:
                self.answer(404, {"error": f"no {self.path}"})

        def do_POST(self):
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            split = int(self.headers.get(HEADER, len(raw)))
            try:
                count = check_tensor(json.loads(raw[:split]), raw[split:])
            except (ValueError, KeyError, TypeError) as e:
                with lock:
                    counts["refused"] += 1
                self.answer(400, {"error": str(e)})
                return
            with lock:
                counts["requests"] += 1
                counts["images"] += count
                counts["body_bytes"] += len(raw)
                counts["header_bytes"] += split
            data = ",".join([ROW] * count)
            self.answer(200, (f'{{"model_name":"{MODEL}","outputs":[{{"name":"scores",'
                              f'"datatype":"FP32","shape":[{count},{CLASSES}],'
                              f'"data":[{data}]}}]}}').encode())
    return Handler


class Loopback:
    """The loopback v2 server on 127.0.0.1 in a thread; `.url`, `.traffic()`."""

    def __enter__(self):
        self.counts = dict.fromkeys(Traffic._fields, 0)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0),
                                          loopback_handler(self.counts, threading.Lock()))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        return self

    def traffic(self) -> Traffic:
        return Traffic(**self.counts)

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def job(folder: str, output: str, endpoint: str, extra) -> dict:
    """One job in a subprocess: its peak RSS (MiB, its own VmHWM: see memory.py), wall time
    and summary."""
    command = [sys.executable, "-c", RUN_REPORTING_PEAK, "--input", folder, "--endpoint",
               endpoint, "--output", output, "--protocol", "v2", "--instance_format", "tensor",
               "--resize", "crop", "--resample", "bicubic", "--normalize", "imagenet",
               "--tensor_layout", "NCHW", "--tensor_dtype", "FP32", "--binary_data",
               "--max_concurrent_requests", "16", *extra]
    started, cpu = time.monotonic(), children_cpu_s()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    timer = threading.Timer(JOB_TIMEOUT_S, process.kill)
    timer.start()
    stdout, stderr = process.communicate()
    timer.cancel()
    if process.returncode != 0:
        raise RuntimeError(f"job failed with status {process.returncode}: {' '.join(command)}")
    peak_kb = next(int(line[len(PEAK_LINE):]) for line in stderr.splitlines()
                   if line.startswith(PEAK_LINE))
    return {"peak_rss_mib": peak_kb / 1024, "wall_s": time.monotonic() - started,
            "cpu_s": children_cpu_s() - cpu, "summary": json.loads(stdout)}


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def server_for(name: str):
    if name == "loopback":
        return Loopback()
    from tests.servers import kserve_onnx_raw_server
    return kserve_onnx_raw_server(MODEL)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--distinct", type=int, default=100,
                        help="different JPEGs among them (written once; the rest are links)")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(),
                                                        "bp-tensor-memory"))
    parser.add_argument("--server", choices=("loopback", "kserve"), default="loopback")
    args, extra = parser.parse_known_args(argv)

    folder = photo_folder(args.cache, args.images, args.distinct)
    with tempfile.TemporaryDirectory(prefix="bp-tensor-out-") as out, \
            server_for(args.server) as server:
        result = job(folder, os.path.join(out, "p"), f"{server.url}/v2/models/{MODEL}/infer",
                     extra)
        traffic = server.traffic() if args.server == "loopback" else None
    summary = result["summary"]
    if summary["predicted"] != args.images or not summary["accounted"]:
        raise RuntimeError(f"unexpected summary {summary}")
    report = {"images": args.images, "distinct": args.distinct, "server": args.server,
              "peak_rss_mib": round(result["peak_rss_mib"], 1), "target_mib": TARGET_MIB,
              "within_target": result["peak_rss_mib"] < TARGET_MIB,
              "wall_s": round(result["wall_s"], 1), "cpu_s": round(result["cpu_s"], 1),
              "images_per_s": summary["images_per_s"], "requests": summary["requests"]}
    if traffic is not None:
        report.update({
            "refused_requests": traffic.refused,
            "images_per_request": round(traffic.images / traffic.requests, 2),
            "body_bytes_per_image": round(traffic.body_bytes / traffic.images, 1),
            "tensor_bytes_per_image": PIXEL_BYTES,
            "json_header_bytes_per_request": round(traffic.header_bytes / traffic.requests, 1)})
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
