"""A run's files written directly, as the pipeline leaves them (summary, metrics, prediction
shards or committed parts, dead letters), for report tests and screenshots: a finished run, a
killed one (parts only, no summary), one where everything failed, and runs with an
`embedding` column (Parquet `list<float32>`, null when absent)."""
import datetime
import json
import os
from typing import Dict, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.paths import parts_dir
from core.records import dead_letter, prediction_record, prediction_schema, Stage
from transforms import metrics

RUN_ID = "20261206T120000Z-5e1f0a"
START = datetime.datetime(2026, 12, 6, 12, 0, 0, tzinfo=datetime.timezone.utc)
EMBEDDING_FIELD = pa.field("embedding", pa.list_(pa.float32()))


def schema() -> pa.Schema:
    """The prediction schema with its `embedding` column (added here where it lacks one)."""
    base = prediction_schema()
    return base if "embedding" in base.names else base.append(EMBEDDING_FIELD)


def predictions(keys: Sequence[str], span_s: float, seed: int = 0,
                labels: Sequence[str] = ("cat", "dog", "tabby", "espresso", "rocket"),
                embeddings: Optional[np.ndarray] = None) -> pa.Table:
    """A table of prediction rows spread evenly over `span_s` seconds."""
    rng = np.random.default_rng(seed)
    offsets = np.sort(rng.uniform(0, span_s, len(keys))) if len(keys) else []
    rows = []
    for i, (key, offset) in enumerate(zip(keys, offsets)):
        score = float(rng.beta(5, 2))
        row = prediction_record(key, [(labels[i % len(labels)], score), ("other", 1 - score)],
                                "local", START + datetime.timedelta(seconds=float(offset)))
        row["embedding"] = None if embeddings is None else embeddings[i].tolist()
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=schema())


def latency_metrics(latencies_ms: Sequence[float]) -> dict:
    counters: Dict[str, int] = {"requests": len(latencies_ms)}
    for ms in latencies_ms:
        name = metrics.latency_bucket(ms)
        counters[name] = counters.get(name, 0) + 1
    distributions = {}
    if len(latencies_ms):
        values = [int(round(ms)) for ms in latencies_ms]
        distributions["latency_ms"] = {"count": len(values), "sum": sum(values),
                                       "min": min(values), "max": max(values),
                                       "mean": sum(values) / len(values)}
    return {"counters": counters, "distributions": distributions}


def write_run(folder: str, table: pa.Table, failed_keys: Sequence[str] = (),
              latencies_ms: Sequence[float] = (), killed: bool = False,
              rows_per_file: int = 200_000, span_s: float = 1.0) -> str:
    """Write a run's files under `folder`; returns its prefix (`<folder>/pred-<run id>`)."""
    os.makedirs(folder, exist_ok=True)
    output, errors = os.path.join(folder, "pred"), os.path.join(folder, "pred-errors")
    prefix, errors_prefix = f"{output}-{RUN_ID}", f"{errors}-{RUN_ID}"
    files = max(1, -(-table.num_rows // rows_per_file))
    for i in range(files):
        part = table.slice(i * rows_per_file, rows_per_file)
        if killed:
            path = f"{parts_dir(prefix)}/part-ab12cd-{i:05d}.parquet.part"
        else:
            path = f"{prefix}-{i:05d}-of-{files:05d}.parquet"
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pq.write_table(part, path)
    if failed_keys:
        path = (f"{parts_dir(errors_prefix)}/part-ab12cd-00000.jsonl.part" if killed
                else f"{errors_prefix}-00000-of-00001.jsonl")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            for i, key in enumerate(failed_keys):
                when = START + datetime.timedelta(seconds=span_s * i / len(failed_keys))
                f.write(json.dumps(dead_letter(
                    key, Stage.PREDICT, "connection refused (http://127.0.0.1:9/v1/"
                    "projects/p/models/m:predict)", None, 6, when)) + "\n")
    if killed:
        return prefix
    with open(f"{prefix}-metrics.json", "w", encoding="utf-8") as f:
        json.dump(latency_metrics(latencies_ms), f)
    summary = {"run_id": RUN_ID, "inputs": table.num_rows + len(failed_keys),
               "predicted": table.num_rows, "failed": len(failed_keys), "skipped": 0,
               "failed_by_stage": {"predict": len(failed_keys)} if failed_keys else {},
               "requests": len(latencies_ms), "retries": 0, "elapsed_s": round(span_s + 1.5, 3),
               "images_per_s": round(table.num_rows / (span_s + 1.5), 1), "accounted": True,
               "output": prefix, "errors": errors_prefix}
    with open(f"{prefix}-summary.json", "w", encoding="utf-8") as f:
        json.dump(summary, f)
    return prefix
