"""Throughput of the predict engine against the project's local server (prints figures).

    python benchmarks/throughput.py [--case all|latency|cpu|overhead|answers|qps|commits]
                                    [--images 3000] [--runinference_images 240]
                                    [--cpu_images 12000] [--overhead_images 12000]
                                    [--answers_images 1600] [--repeats 5]
                                    [--latency_repeats 2] [--qps_requests 200]

One image set and one local server per case (`--case` runs one of them). Beam's RunInference
runs with a RemoteModelHandler posting the same ML Engine requests (4 instances each, one
blocking POST per batch), in two setups:
- plain, as Beam's examples write it: `beam.Create(paths)`, DirectRunner's one thread, so one
  request in flight;
- tuned, as a Beam user who knows DirectRunner would: `fileio.MatchFiles` then a `Reshuffle`,
  `--direct_running_mode multi_threading --direct_num_workers 16`: 16 requests in flight.
1. Latency-bound: server with 500 ms latency and 16 concurrent slots, <= 4 instances per
   request, so at most 16 / 0.5 s * 4 = 128 img/s. This pipeline (one DirectRunner
   process, `--max_concurrent_requests 16`) against both RunInference setups, in
   `--latency_repeats` rounds whose order rotates, median. Target: ours >= 90 % of the
   ceiling.
2. CPU-bound: no latency. This pipeline against a bare asyncio + aiohttp loop that reads each
   file, base64-encodes it and POSTs the same requests (16 in flight), and against both
   RunInference setups, all on the same 12,000 images. Target: >= 60 % of the bare loop.
   The server shares the machine's cores, so the runs rotate and the median is shown.
3. Per-image overhead: a server that answers a constant without looking at the images
   (`--constant 1`), 8x8 JPEGs, 32 per request (the default), no latency: the client is
   the bottleneck. This pipeline against the same bare loop, alternating, median of
   `--repeats`; also the client's CPU time (user + sys of this process) per image. Target:
   >= 1/3 of the bare loop's img/s. Both also run a 32-image set as often: its time is
   each side's start-up, and the img/s beyond it are printed too.
4. Real models' answers: as 3., but each image's answer is 1,000 unnamed scores (an
   ImageNet classifier's softmax; `--constant 1000`), 1,600 images. This pipeline against
   the same bare loop (which parses each answer and keeps nothing), with the same start-up
   runs; no target: what reading and writing such answers costs.
5. The qps limit: `--qps 20` against a server quota of 20 requests/s; the rate the server
   measured and its quota 429s.
6. Incremental commits (docs/crash-safety.md): the CPU-bound run with the default commits and
   with `--commit_every_records 0` (shards only at the end), alternating (each setting first
   in half of the pairs: the second run of a pair is slower), median of each.
   Target: overhead under 5 %.

Rates are end to end (wall clock of the whole job, pipeline start-up included) and, for the
latency case, also steady state (the server's full seconds). In the latency case the plain
RunInference runs on the first `--runinference_images` images only, because at ~8 img/s the
full set would take minutes.
"""
import argparse
import asyncio
import glob
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Callable, NamedTuple, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import aiohttp  # noqa: E402
import apache_beam as beam  # noqa: E402
from apache_beam.io import fileio  # noqa: E402
from apache_beam.ml.inference.base import (PredictionResult, RemoteModelHandler,  # noqa: E402
                                           RunInference)
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

from localserver import LocalServer  # noqa: E402
from localserver.demo import LABEL_COLOURS, write_image  # noqa: E402
from pipeline.run import run  # noqa: E402
from protocols import make_protocol

PER_REQUEST = 4
CONCURRENCY = 16
LATENCY_MS = 500
CAPACITY = 16
CEILING = CAPACITY / (LATENCY_MS / 1000) * PER_REQUEST
QPS = 20
OVERHEAD_PER_REQUEST = 32  # the pipeline's default --max_instances_per_request
STARTUP_IMAGES = 32  # one request: what a run costs before its per-image work
ANSWER_SCORES = 1000  # scores per answer in the answers case: an ImageNet softmax
PROTOCOL = make_protocol("mlengine")
TUNED_THREADS = 16  # --direct_num_workers of the tuned RunInference


def make_images(folder: str, count: int, size=(64, 48)):
    labels = list(LABEL_COLOURS)
    existing = sorted(glob.glob(os.path.join(folder, "*.jpg")))
    for i in range(len(existing), count):
        write_image(os.path.join(folder, f"{labels[i % len(labels)]}_{i:05d}.jpg"),
                    labels[i % len(labels)], seed=i, size=size)
    return sorted(glob.glob(os.path.join(folder, "*.jpg")))[:count]


def timed(function, *args) -> dict:
    """Wall clock and this process's CPU time (user + sys, all threads) of one call."""
    started, cpu = time.monotonic(), time.process_time()
    result = function(*args)
    return {"result": result, "seconds": time.monotonic() - started,
            "cpu": time.process_time() - cpu}


def ours(folder: str, server: LocalServer, out: str, *extra,
         per_request: int = PER_REQUEST) -> dict:
    run_ = timed(run, ["--input", folder, "--endpoint", server.endpoint("mlengine"),
                       "--output", out, "--max_instances_per_request", str(per_request),
                       "--max_concurrent_requests", str(CONCURRENCY), *extra])
    summary = run_["result"]
    assert summary["accounted"] and summary["failed"] == 0, summary
    return {"images": summary["predicted"], "seconds": run_["seconds"], "cpu": run_["cpu"],
            "rate": summary["predicted"] / run_["seconds"], "requests": summary["requests"]}


def link(source: str, target: str):
    """A hard link (a symlink would add a resolution to every stat and open of ours)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def steady_rate(stats: dict, per_request: int) -> float:
    """Images per second over the server's full seconds (the first and last are partial)."""
    seconds = sorted(stats["per_second"])[1:-1]
    if not seconds:
        return float("nan")
    return sum(stats["per_second"][s] for s in seconds) / len(seconds) * per_request


# -- Beam RunInference with a RemoteModelHandler -------------------------------------------

def read_instance(path: str) -> bytes:
    with open(path, "rb") as f:
        return PROTOCOL.instance(path, f.read(), "image/jpeg")


class PostHandler(RemoteModelHandler):
    """One blocking POST per batch of `PER_REQUEST` instances (an ML Engine body)."""

    def __init__(self, endpoint: str):
        super().__init__(namespace="bench_runinference", num_retries=3, throttle_delay_secs=1)
        self._endpoint = endpoint

    def create_client(self):
        import requests
        session = requests.Session()
        session.trust_env = False
        # RunInference shares one client among a process's threads: a connection for each
        session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=TUNED_THREADS))
        return session

    def request(self, batch, model, inference_args=None):
        response = model.post(self._endpoint, data=PROTOCOL.body(batch),
                              headers={"Content-Type": "application/json"}, timeout=60)
        response.raise_for_status()
        predictions = response.json()["predictions"]
        return [PredictionResult(x, p) for x, p in zip(batch, predictions)]

    def batch_elements_kwargs(self):
        return {"min_batch_size": PER_REQUEST, "max_batch_size": PER_REQUEST}


def count_result(_):
    beam.metrics.Metrics.counter("bench", "predicted").inc()


def file_path(metadata) -> str:
    return metadata.path


def plain_inputs(p, folder: str):
    """As Beam's examples write it: the list of paths, one DirectRunner thread."""
    return p | beam.Create(sorted(glob.glob(os.path.join(folder, "*.jpg"))))


def tuned_inputs(p, folder: str):
    """As a Beam user who knows DirectRunner writes it: MatchFiles, then a Reshuffle so the
    reads and requests spread over the TUNED_THREADS threads of its flags (RUNINFERENCE)."""
    return (p | fileio.MatchFiles(os.path.join(folder, "*.jpg"))
              | "Path" >> beam.Map(file_path)
              | beam.Reshuffle())


class Setup(NamedTuple):
    """One way to run RunInference with PostHandler on DirectRunner."""
    label: str
    inputs: Callable
    flags: Tuple[str, ...]


RUNINFERENCE = {
    "plain": Setup("RunInference, 1 thread", plain_inputs, ()),
    "tuned": Setup(f"RunInference, Reshuffle, {TUNED_THREADS} threads", tuned_inputs,
                   ("--direct_running_mode", "multi_threading",
                    "--direct_num_workers", str(TUNED_THREADS))),
}


def runinference(folder: str, server: LocalServer, setup: str = "plain") -> dict:
    """RunInference with PostHandler on every image of `folder`."""
    run_ = timed(run_runinference, folder, server, RUNINFERENCE[setup])
    done = run_["result"]
    expected = len(glob.glob(os.path.join(folder, "*.jpg")))
    assert done == expected, (done, expected)
    return {"images": done, "seconds": run_["seconds"], "cpu": run_["cpu"],
            "rate": done / run_["seconds"], "requests": server.stats()["requests"]}


def run_runinference(folder: str, server: LocalServer, setup: Setup) -> int:
    """The images predicted."""
    p = beam.Pipeline(runner="FnApiRunner",  # DirectRunner without the Prism download
                      options=PipelineOptions(list(setup.flags)))
    (setup.inputs(p, folder)
       | "Read" >> beam.Map(read_instance)
       | RunInference(PostHandler(server.endpoint("mlengine")))
       | beam.Map(count_result))
    result = p.run()
    result.wait_until_finish()
    counters = result.metrics().query()["counters"]
    return sum(c.committed or c.attempted or 0 for c in counters
               if c.key.metric.name == "predicted")


# -- a bare asyncio loop ---------------------------------------------------------------------

async def bare_loop(folder: str, endpoint: str, per_request: int = PER_REQUEST) -> int:
    paths = sorted(glob.glob(os.path.join(folder, "**", "*.jpg"), recursive=True))
    chunks = [paths[i:i + per_request] for i in range(0, len(paths), per_request)]
    queue = asyncio.Queue()
    for chunk in chunks:
        queue.put_nowait(chunk)
    done = 0

    async def worker(session):
        nonlocal done
        while not queue.empty():
            chunk = queue.get_nowait()
            instances = [read_instance(path) for path in chunk]
            async with session.post(endpoint, data=PROTOCOL.body(instances),
                                    headers={"Content-Type": "application/json"}) as response:
                body = json.loads(await response.read())
            done += len(body["predictions"])

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as s:
        await asyncio.gather(*(worker(s) for _ in range(CONCURRENCY)))
    return done


def bare(folder: str, server: LocalServer, per_request: int = PER_REQUEST) -> dict:
    run_ = timed(lambda: asyncio.run(bare_loop(folder, server.endpoint("mlengine"),
                                               per_request)))
    done = run_["result"]
    return {"images": done, "seconds": run_["seconds"], "cpu": run_["cpu"],
            "rate": done / run_["seconds"], "requests": server.stats()["requests"]}


def pair(folder: str, server: LocalServer, out: str, per_request: int = PER_REQUEST,
         ours_first: bool = False):
    """One run each of the bare loop and this pipeline, in either order (the second run of
    a pair tends to be the slower): (bare's figures, ours)."""
    def run_bare():
        server.reset_stats()
        return bare(folder, server, per_request)

    def run_ours():
        server.reset_stats()
        return ours(folder, server, out, per_request=per_request)

    if ours_first:
        mine = run_ours()
        return run_bare(), mine
    loop = run_bare()
    return loop, run_ours()


def rotated(contenders: dict, server: LocalServer, repeats: int) -> dict:
    """`repeats` rounds of one run of each contender (name -> function of no arguments, run
    with the server's stats reset), the order rotated each round so that each runs first as
    often (the later runs of a round tend to be slower): name -> its figures, round by round."""
    names = list(contenders)
    runs = {name: [] for name in names}
    for i in range(repeats):
        for name in names[i % len(names):] + names[:i % len(names)]:
            server.reset_stats()
            runs[name].append(contenders[name]())
    return runs


def median(values):
    return sorted(values)[len(values) // 2]


def median_run(runs):
    return sorted(runs, key=lambda r: r["rate"])[len(runs) // 2]


def show(name: str, figures: dict):
    cpu = (f", {figures['cpu'] / figures['images'] * 1e6:.0f} us CPU/image"
           if "cpu" in figures else "")
    print(f"  {name:<34} {figures['images']:>5} images in {figures['seconds']:6.1f} s = "
          f"{figures['rate']:6.1f} img/s  ({figures['requests']} requests{cpu})", flush=True)


def compare(loops, mines, target: str):
    """The median runs of both, and ours as a share of the bare loop's img/s."""
    loop, mine = median_run(loops), median_run(mines)
    show("bare asyncio + aiohttp loop", loop)
    show("ours (DirectRunner, 1 process)", mine)
    rates = {name: " ".join(f"{r['rate']:.0f}" for r in runs)
             for name, runs in (("bare", loops), ("ours", mines))}
    ratios = [m["rate"] / b["rate"] for b, m in zip(loops, mines)]
    cpu = {name: median([r["cpu"] / r["images"] * 1e6 for r in runs])
           for name, runs in (("bare", loops), ("ours", mines))}
    print(f"  ours: {mine['rate'] / loop['rate']:.0%} of the bare loop (target: {target}); "
          f"pairwise {' '.join(f'{r:.0%}' for r in ratios)}; "
          f"all runs: bare {rates['bare']}, ours {rates['ours']} img/s")
    print(f"  client CPU per image (median): bare {cpu['bare']:.0f} us, ours {cpu['ours']:.0f} "
          f"us ({cpu['bare'] / cpu['ours']:.0%})", flush=True)


def rate_list(runs) -> str:
    return " ".join(f"{r['rate']:.0f}" for r in runs)


def versus_runinference(runs: dict):
    """Ours against each RunInference setup run: the median runs, the ratio of the medians and
    the ratio round by round (its spread)."""
    mine = median_run(runs["ours"])
    for setup in RUNINFERENCE:
        theirs = median_run(runs[setup])
        ratios = " ".join(f"{m['rate'] / r['rate']:.2f}x"
                          for m, r in zip(runs["ours"], runs[setup]))
        cpu = {name: median([r["cpu"] / r["images"] * 1e6 for r in runs[name]])
               for name in ("ours", setup)}
        print(f"  ours / {RUNINFERENCE[setup].label}: "
              f"{mine['rate'] / theirs['rate']:.2f}x; round by round {ratios}; all runs: "
              f"ours {rate_list(runs['ours'])}, RunInference {rate_list(runs[setup])} img/s; "
              f"client CPU per image (median): ours {cpu['ours']:.0f}, RunInference "
              f"{cpu[setup]:.0f} us", flush=True)


def latency_case(sets, out, args):
    print(f"latency-bound: {LATENCY_MS} ms, {CAPACITY} slots, {PER_REQUEST} per request -> "
          f"ceiling {CEILING:.0f} img/s; {args.latency_repeats} rounds, rotated (median)")
    with LocalServer(latency_ms=LATENCY_MS, capacity=CAPACITY) as server:
        def run_ours():
            mine = ours(sets["latency"], server, os.path.join(out, "latency"))
            return {**mine, "steady": steady_rate(server.stats(), PER_REQUEST)}

        runs = rotated({"ours": run_ours,
                        "tuned": lambda: runinference(sets["latency"], server, "tuned"),
                        "plain": lambda: runinference(sets["runinference"], server, "plain")},
                       server, args.latency_repeats)
    mine = median_run(runs["ours"])
    show("ours (DirectRunner, 1 process)", mine)
    for setup in RUNINFERENCE:
        show(RUNINFERENCE[setup].label, median_run(runs[setup]))
    print(f"  ours: {mine['rate'] / CEILING:.0%} of the ceiling end to end, "
          f"{mine['steady'] / CEILING:.0%} steady ({mine['steady']:.1f} img/s; target >= 90 %); "
          f"tuned RunInference: {median_run(runs['tuned'])['rate'] / CEILING:.0%}")
    versus_runinference(runs)


def cpu_case(sets, out, args):
    print(f"cpu-bound: no latency; {args.repeats} rounds, rotated (median)")
    with LocalServer(latency_ms=0, capacity=64) as server:
        runs = rotated({"bare": lambda: bare(sets["cpu"], server),
                        "ours": lambda: ours(sets["cpu"], server, os.path.join(out, "cpu")),
                        "tuned": lambda: runinference(sets["cpu"], server, "tuned"),
                        "plain": lambda: runinference(sets["cpu"], server, "plain")},
                       server, args.repeats)
    compare(runs["bare"], runs["ours"], ">= 60 %")
    for setup in RUNINFERENCE:
        show(RUNINFERENCE[setup].label, median_run(runs[setup]))
    versus_runinference(runs)


def overhead_case(sets, out, args):
    print(f"per-image overhead: constant answers, 8x8 JPEGs, {OVERHEAD_PER_REQUEST} per "
          f"request, no latency; {args.repeats} runs each, alternating (median)")
    constant_answers(sets["overhead"], sets["startup"], out, args.repeats, 1, ">= 33 %")


def answers_case(sets, out, args):
    print(f"real models' answers: {ANSWER_SCORES} unnamed scores per image, 8x8 JPEGs, "
          f"{OVERHEAD_PER_REQUEST} per request, no latency; {args.repeats} runs each, "
          f"alternating (median)")
    constant_answers(sets["answers"], sets["startup"], out, args.repeats, ANSWER_SCORES,
                     "none")


def constant_answers(folder: str, startup_folder: str, out: str, repeats: int, scores: int,
                     target: str):
    """Bare loop and pipeline against a server answering `scores` constant scores (1: one
    label), on `folder` and, beside each full pair, on the start-up set."""
    full, small = [], []
    with LocalServer(latency_ms=0, capacity=64, constant=scores) as server:
        for i in range(repeats):  # the start-up runs beside the full ones: the same drift
            for runs, images in ((full, folder), (small, startup_folder)):
                runs.append(pair(images, server, os.path.join(out, "constant"),
                                 OVERHEAD_PER_REQUEST, ours_first=i % 2 == 1))
    loops, mines = [loop for loop, _ in full], [mine for _, mine in full]
    compare(loops, mines, target)
    per_image(loops, mines, [loop for loop, _ in small], [mine for _, mine in small])


def per_image(loops, mines, small_loops, small_mines):
    """Img/s beyond start-up: the extra images over the extra wall time of the full runs
    against the 32-image runs (medians), for both sides."""
    rates = {}
    for name, full, small in (("bare", loops, small_loops), ("ours", mines, small_mines)):
        extra_s = median([r["seconds"] for r in full]) - median([r["seconds"] for r in small])
        extra_images = full[0]["images"] - small[0]["images"]
        if extra_s <= 0 or extra_images <= 0:
            print(f"  per image beyond start-up: not measurable ({name}: {extra_images} more "
                  f"images in {extra_s:+.2f} s); use more --overhead_images")
            return
        rates[name] = extra_images / extra_s
    startup = {name: median([r["seconds"] for r in runs])
               for name, runs in (("bare", small_loops), ("ours", small_mines))}
    print(f"  start-up ({STARTUP_IMAGES}-image runs, median): bare {startup['bare']:.2f} s, "
          f"ours {startup['ours']:.2f} s; per image beyond it: bare {rates['bare']:.0f}, ours "
          f"{rates['ours']:.0f} img/s = {rates['ours'] / rates['bare']:.0%} of the bare loop",
          flush=True)


def qps_case(sets, out, args):
    print(f"qps: --qps {QPS} against a server quota of {QPS}/s, one image per request")
    with LocalServer(quota_qps=QPS) as server:
        ours(sets["qps"], server, os.path.join(out, "qps"), "--qps", str(QPS),
             "--max_instances_per_request", "1")
        stats = server.stats()
        rate = steady_rate(stats, 1)
        print(f"  measured {rate:.2f} requests/s over the full seconds ({rate / QPS - 1:+.1%}), "
              f"{stats['quota_429']} quota 429s, {stats['requests']} requests")


def commits_case(sets, out, args):
    print(f"commits: cpu-bound, default commits vs --commit_every_records 0; "
          f"{args.repeats} runs each, alternating (median)")
    settings = {"with": [], "without": []}
    flags = {"with": (), "without": ("--commit_every_records", "0")}
    with LocalServer(latency_ms=0, capacity=64) as server:
        for i in range(args.repeats):  # each setting goes first in half of the pairs
            for name in ("without", "with") if i % 2 == 0 else ("with", "without"):
                server.reset_stats()
                settings[name].append(ours(sets["commits"], server, os.path.join(out, name),
                                           *flags[name]))
    with_commits, without = settings["with"], settings["without"]
    on, off = median_run(with_commits), median_run(without)
    show("ours, incremental commits", on)
    show("ours, shards only at the end", off)
    rates = {name: " ".join(f"{r['rate']:.0f}" for r in runs)
             for name, runs in (("with", with_commits), ("without", without))}
    cpu = {name: median([r["cpu"] / r["images"] * 1e6 for r in runs])
           for name, runs in settings.items()}
    print(f"  overhead {1 - on['rate'] / off['rate']:+.1%} (target: < 5 %); all runs: "
          f"with {rates['with']}, without {rates['without']} img/s")
    print(f"  client CPU per image (median): with {cpu['with']:.0f} us, without "
          f"{cpu['without']:.0f} us ({cpu['with'] / cpu['without'] - 1:+.1%}); load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)


CASES = {"latency": latency_case, "cpu": cpu_case, "overhead": overhead_case,
         "answers": answers_case, "qps": qps_case, "commits": commits_case}


def image_sets(workdir: str, counts: dict) -> dict:
    """A folder of hard links per case (the first `count` images of a shared pool)."""
    sets = {}
    pools = {}
    for name, (count, size) in counts.items():
        pool = os.path.join(workdir, f"images-{size[0]}x{size[1]}")
        if pool not in pools:
            os.makedirs(pool, exist_ok=True)
            needed = max(c for c, s in counts.values() if s == size)
            pools[pool] = make_images(pool, needed, size)
        sets[name] = os.path.join(workdir, f"set-{name}-{count}-{size[0]}x{size[1]}")
        if not os.path.isdir(sets[name]):
            os.makedirs(sets[name])
            for path in pools[pool][:count]:  # hard links: real files, as users have
                link(path, os.path.join(sets[name], os.path.basename(path)))
    return sets


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=("all", *CASES), default="all")
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--runinference_images", type=int, default=240)
    parser.add_argument("--cpu_images", type=int, default=12000)
    parser.add_argument("--overhead_images", type=int, default=12000)
    parser.add_argument("--answers_images", type=int, default=1600)
    parser.add_argument("--qps_requests", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5,
                        help="runs of the cpu-bound, overhead, answers and commits cases")
    parser.add_argument("--latency_repeats", type=int, default=2,
                        help="runs of the latency-bound case")
    parser.add_argument("--workdir", default=None, help="keeps the images between runs")
    args = parser.parse_args(argv)

    cases = list(CASES) if args.case == "all" else [args.case]
    counts = {"latency": (args.images, (64, 48)),
              "runinference": (args.runinference_images, (64, 48)),
              "cpu": (args.cpu_images, (64, 48)),
              "overhead": (args.overhead_images, (8, 8)), "startup": (STARTUP_IMAGES, (8, 8)),
              "answers": (args.answers_images, (8, 8)),
              "qps": (args.qps_requests, (64, 48)),
              "commits": (args.cpu_images, (64, 48))}
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-")
    wanted = (cases + ["startup"] * bool({"overhead", "answers"} & set(cases))
              + ["runinference"] * ("latency" in cases))
    sets = image_sets(workdir, {name: counts[name] for name in wanted})
    out = os.path.join(workdir, "out")
    for name in cases:
        CASES[name](sets, out, args)


if __name__ == "__main__":
    main()
