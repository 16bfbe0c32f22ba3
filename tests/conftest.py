"""Shared fixtures: the project's own prediction server over loopback, and job helpers.

Every test that talks to an endpoint uses a real `python -m localserver` subprocess on
127.0.0.1. Tests that change its switches get their own server (`make_server`), or reset
it (`server` resets stats and switches for each test).
"""
import dataclasses
import glob
import json
import os

import pyarrow.parquet as pq
import pytest

from localserver import LocalServer
from localserver.demo import write_image
from localserver.server import Config as ServerConfig

# DirectRunner's batch engine, named directly: Beam 2.77's DirectRunner first tries to download
# the Prism binary from the internet (see pipeline.run.offline_safe_runner).
LOCAL_RUNNER = "FnApiRunner"

DEFAULT_SWITCHES = dataclasses.asdict(ServerConfig())  # the server's own defaults


@pytest.fixture(scope="session")
def session_server():
    with LocalServer() as server:
        yield server


@pytest.fixture
def server(session_server):
    """The shared local server with default switches and zeroed stats."""
    session_server.configure(**DEFAULT_SWITCHES)
    session_server.reset_stats()
    return session_server


@pytest.fixture
def make_server():
    """Start a dedicated server with the given switches; stopped after the test."""
    started = []

    def start(**switches):
        started.append(LocalServer(**switches).start())
        return started[-1]

    yield start
    for s in started:
        s.stop()


def labelled_images(folder, labels, fmt_cycle=("jpg", "png", "jpeg", "webp"), size=(48, 40)):
    """Write one image per label (in order) into `folder`; returns {absolute path: label}."""
    truth = {}
    for i, label in enumerate(labels):
        ext = fmt_cycle[i % len(fmt_cycle)]
        sub = os.path.join(str(folder), "nested") if i % 4 == 3 else str(folder)
        path = os.path.abspath(os.path.join(sub, f"{label}_{i:03d}.{ext}"))
        write_image(path, label, seed=i, size=size)
        truth[path] = label
    return truth


def read_predictions(output_prefix, fmt="parquet"):
    """Every prediction row written under an output prefix, from all runs, keyed by key."""
    rows = []
    if fmt == "parquet":
        for path in sorted(glob.glob(f"{output_prefix}-*.parquet")):
            rows.extend(pq.read_table(path).to_pylist())
    else:
        for path in sorted(glob.glob(f"{output_prefix}-*.jsonl")):
            if os.path.basename(path).startswith(os.path.basename(output_prefix) + "-errors"):
                continue
            with open(path, encoding="utf-8") as f:
                rows.extend(json.loads(line) for line in f if line.strip())
    return rows


def read_dead_letters(errors_prefix):
    rows = []
    for path in sorted(glob.glob(f"{errors_prefix}-*.jsonl")):
        with open(path, encoding="utf-8") as f:
            rows.extend(json.loads(line) for line in f if line.strip())
    return rows


def assert_accounted(summary):
    assert summary["inputs"] == summary["predicted"] + summary["failed"] + summary["skipped"], \
        summary
