"""What `--commit_every_s` costs: parts per hour per writer against the work a kill loses.

Times what one committed part costs on the local disk, with the pipeline's own code: writing
it (`transforms.commit`: Arrow batches, Parquet, temp name + rename) and what a re-run does
with it (`transforms.backfill`: read its keys to skip them, read its rows to adopt them), for
rows of a 5-label model and of a 1,000-score ImageNet classifier (whose `prediction` column
holds all 1,000 scores). Then, for each interval and a writer's rate of predictions, prints
the parts per hour, the launcher/worker CPU the parts cost (fixed per-part cost only: the
per-row cost is paid by every interval alike), the objects a 40-writer, 3-hour job leaves
for a re-run to list and read, and the predictions at risk in a kill.

    python benchmarks/commit_interval.py --repeats 30
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.records import prediction_record, prediction_schema, utc_now  # noqa: E402
from transforms.backfill import parquet_keys  # noqa: E402
from transforms.commit import (parquet_bytes, read_parquet_part,  # noqa: E402
                               write_bytes_atomically)

INTERVALS_S = (1, 2, 5, 10, 30, 60)
JOB_WRITERS, JOB_HOURS = 40, 3
GCS_CLASS_A_PER_1000 = 0.005  # USD, standard storage object writes (public price list)


def rows(count: int, labels: int) -> list:
    now = utc_now()
    scores = [(f"label_{i}", 1.0 / (i + 2)) for i in range(labels)]
    prediction = json.dumps({"scores": [s for _, s in scores]}, separators=(",", ":"))
    return [dict(prediction_record(f"/data/images/{i:09d}.jpg", scores, "m", now),
                 prediction=prediction) for i in range(count)]


def part_costs(folder: str, count: int, labels: int, repeats: int) -> dict:
    """Median seconds to write, read the keys of, and read the rows of one part."""
    records, schema = rows(count, labels), prediction_schema()
    write, keys, adopt = [], [], []
    for i in range(repeats):
        path = os.path.join(folder, f"part-{labels}-{count}-{i:05d}.parquet.part")
        started = time.perf_counter()
        write_bytes_atomically(path, parquet_bytes(records, schema))
        write.append(time.perf_counter() - started)
        started = time.perf_counter()
        assert sum(1 for _ in parquet_keys(path)) == count
        keys.append(time.perf_counter() - started)
        started = time.perf_counter()
        assert sum(1 for _ in read_parquet_part(path)) == count
        adopt.append(time.perf_counter() - started)
    return {"write": statistics.median(write), "keys": statistics.median(keys),
            "adopt": statistics.median(adopt), "bytes": os.path.getsize(path)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--rates", default="50,500", help="predictions/s of one writer")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        for labels in (5, 1000):
            print(f"\n{labels}-label rows: one part's cost on the local disk (median of "
                  f"{args.repeats})")
            print("| rows | bytes | write | re-run: keys | re-run: adopt rows |")
            print("|---|---|---|---|---|")
            fixed = None
            for count in (1, 10, 100, 1000):
                cost = part_costs(folder, count, labels, args.repeats)
                fixed = fixed or cost
                print(f"| {count:,} | {cost['bytes']:,} | {cost['write'] * 1e3:.2f} ms | "
                      f"{cost['keys'] * 1e3:.2f} ms | {cost['adopt'] * 1e3:.2f} ms |")
            per_part = fixed["write"]
            print(f"\nper interval ({labels}-label rows; fixed cost of a part "
                  f"{per_part * 1e3:.2f} ms to write, {fixed['keys'] * 1e3:.2f} ms to read "
                  f"its keys)")
            print("| --commit_every_s | parts/h per writer | CPU per writer | parts of a "
                  f"{JOB_WRITERS}-writer {JOB_HOURS} h job | GCS writes, USD | at risk per "
                  f"writer ({', '.join(args.rates.split(','))} pred/s) |")
            print("|---|---|---|---|---|---|")
            for interval in INTERVALS_S:
                parts_h = 3600 / interval
                job_parts = parts_h * JOB_WRITERS * JOB_HOURS
                risk = " / ".join(f"{int(float(r) * interval):,}" for r in args.rates.split(","))
                print(f"| {interval} s | {parts_h:,.0f} | {per_part / interval * 100:.3f} % | "
                      f"{job_parts:,.0f} | {job_parts / 1000 * GCS_CLASS_A_PER_1000:.2f} | "
                      f"{risk} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
