"""How many worker processes share the job (the `--qps` split and the dry-run estimate), and
whether it runs on this machine, from Beam's runner and worker options."""
import os
import re
from typing import Optional

from apache_beam.options.pipeline_options import (DebugOptions, DirectOptions, PipelineOptions,
                                                  StandardOptions, WorkerOptions)

from pipeline.options import ConfigError, PredictOptions

# Shared-core machine types, whose names do not end in their vCPU count.
SHARED_CORE_VCPUS = {"f1-micro": 1, "g1-small": 1, "e2-micro": 2, "e2-small": 2, "e2-medium": 2}


def machine_vcpus(machine_type: str) -> Optional[int]:
    """vCPUs of a Compute Engine machine type (`n2-standard-4`, `n1-custom-8-30720`,
    `e2-medium`), or None when the name does not say (GPU shapes such as `a2-highgpu-1g`)."""
    name = machine_type.rsplit("/", 1)[-1].lower()
    if name in SHARED_CORE_VCPUS:
        return SHARED_CORE_VCPUS[name]
    match = (re.fullmatch(r"(?:[a-z0-9]+-)?custom-(\d+)-\d+(?:-ext)?", name)
             or re.fullmatch(r"[a-z][a-z0-9]*-[a-z]+-(\d+)(?:-lssd|-metal)?", name))
    return int(match.group(1)) if match else None


def dataflow_processes(options: PipelineOptions) -> Optional[int]:
    """SDK processes of a Dataflow job at full scale, or None when the options do not say.

    Dataflow runs one Python SDK process per vCPU of each worker (one per worker with
    `--experiments=no_use_multiple_sdk_containers`); the job may scale up to
    `--max_num_workers` workers (to exactly `--num_workers` with `--autoscaling_algorithm NONE`).
    """
    workers = options.view_as(WorkerOptions)
    count = workers.max_num_workers
    if not count and workers.autoscaling_algorithm == "NONE":
        count = workers.num_workers
    if not count:
        return None
    if "no_use_multiple_sdk_containers" in (options.view_as(DebugOptions).experiments or []):
        return count
    vcpus = machine_vcpus(workers.machine_type) if workers.machine_type else None
    return count * vcpus if vcpus else None


def worker_processes(options: PipelineOptions) -> int:
    """How many processes share --qps: set explicitly, or derived from the runner options.

    Each process holds its own limiter, so it gets `qps / processes`. DirectRunner:
    `--direct_num_workers` in multi_processing mode (0 = one per core), else 1 (threads share
    one process and one limiter). Dataflow: `dataflow_processes`; with --qps and no way to
    tell, a ConfigError asks for the missing options. Other runners: `--max_num_workers`
    (else `--num_workers`, else 1); set --qps_worker_processes where that is not right.
    """
    explicit = options.view_as(PredictOptions).qps_worker_processes
    if explicit:
        return explicit
    runner = (options.view_as(StandardOptions).runner or "DirectRunner").lower()
    if "direct" in runner or "fnapi" in runner:
        direct = options.view_as(DirectOptions)
        if direct.direct_running_mode != "multi_processing":
            return 1
        return direct.direct_num_workers or os.cpu_count() or 1
    if "dataflow" in runner:
        processes = dataflow_processes(options)
        if processes is None and options.view_as(PredictOptions).qps:
            raise ConfigError(
                "--qps on Dataflow is shared by every SDK process of the job (one per worker "
                "vCPU): give --max_num_workers and --machine_type, or --qps_worker_processes")
        return processes or 1
    workers = options.view_as(WorkerOptions)
    return max(1, workers.max_num_workers or workers.num_workers or 1)


LOCAL_RUNNERS = ("direct", "fnapi", "prism")


def runs_locally(options: PipelineOptions) -> bool:
    """Whether the job runs on this machine (its credentials are the workers')."""
    runner = (options.view_as(StandardOptions).runner or "DirectRunner").lower()
    return any(name in runner for name in LOCAL_RUNNERS)


def runs_in_one_process(options: PipelineOptions, processes: int) -> bool:
    """Whether one process runs the whole job: a local runner with one worker process."""
    return runs_locally(options) and processes == 1
