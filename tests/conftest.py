"""Shared fixtures: the project's own prediction server over loopback, and gcp-storage-emulator
for gs:// (helpers: helpers.py).

Every test that talks to an endpoint uses a real `python -m localserver` subprocess on
127.0.0.1. Tests that change its switches get their own server (`make_server`), or reset
it (`server` resets stats and switches for each test).
"""
import json
import os
import subprocess
import sys
import tempfile

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from localserver import LocalServer
from localserver.classifiers import EFFICIENTNET_LITE0
from tests.helpers import (DEFAULT_SWITCHES, EMULATOR_BUCKET as BUCKET,
                           EMULATOR_PROJECT as PROJECT, STUB_CREDENTIALS)
from tests.servers import (free_port, kserve_onnx_raw_server, listening,
                           mlserver_onnx_raw_server, stop)

# `./run_tests.sh` runs the modules in parallel (pytest-xdist, --dist loadfile), handing them
# out in collection order: the longest first, so that none of them starts last and alone, and
# those needing the KServe/MLServer virtualenvs (installed in the background) last.
LONGEST_MODULES = ("test_crashsafe.py", "test_backfill.py", "test_odd_inputs.py",
                   "test_multiworker.py", "test_dataflow.py", "test_packaging.py")
MODEL_SERVER_MODULES = ("test_model_servers.py", "test_raw_model_servers.py", "test_tensor_e2e.py",
                        "test_faults.py", "test_embedding_servers.py")


def module_rank(item) -> int:
    name = item.path.name
    if name in LONGEST_MODULES:
        return LONGEST_MODULES.index(name)
    return len(LONGEST_MODULES) + (name in MODEL_SERVER_MODULES)


def pytest_collection_modifyitems(items):
    items.sort(key=module_rank)  # stable: a module keeps its own order


@pytest.fixture(scope="session", autouse=True)
def temp_files_under_basetemp(tmp_path_factory):
    """Temporary files made in the test processes go under pytest's base temp, which pytest
    prunes: a Beam Pipeline makes a `beam-pipeline-temp*` folder that only `run()` removes,
    and many tests build pipelines they never run."""
    before = tempfile.tempdir
    tempfile.tempdir = str(tmp_path_factory.mktemp("tmp"))
    yield
    tempfile.tempdir = before


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


# -- gs:// against gcp-storage-emulator (see docs/testing.md, "Testing gs:// offline") --------

EMULATOR_STARTUP_TIMEOUT_S = 20.0
# A port free when picked may be taken by another test process before the emulator binds it.
EMULATOR_START_ATTEMPTS = 3


def start_emulator():
    """A gcp-storage-emulator process listening on 127.0.0.1 (in memory), and its port."""
    program = os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator")
    for _ in range(EMULATOR_START_ATTEMPTS):
        port = free_port()
        process = subprocess.Popen([program, "start", "--host=127.0.0.1", f"--port={port}",
                                    "--in-memory", "--quiet"], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            if listening(port, process, EMULATOR_STARTUP_TIMEOUT_S, "gcp-storage-emulator"):
                return process, port
        except BaseException:
            stop(process)
            raise
    raise RuntimeError(f"gcp-storage-emulator exited {EMULATOR_START_ATTEMPTS} times "
                       f"(last: {process.returncode})")


@pytest.fixture(scope="module")
def emulator():
    """gcp-storage-emulator on 127.0.0.1 (in memory); yields its URL."""
    process, port = start_emulator()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


@pytest.fixture
def gcs(emulator, tmp_path, monkeypatch):
    """The environment of a job against the emulator; yields a client of a fresh bucket."""
    stub = tmp_path / "stub-adc.json"
    stub.write_text(json.dumps(STUB_CREDENTIALS))
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(stub))
    client = storage.Client(credentials=AnonymousCredentials(), project=PROJECT)
    bucket = client.bucket(BUCKET)
    if bucket.exists():
        for blob in client.list_blobs(BUCKET):
            blob.delete()
    else:
        client.create_bucket(BUCKET)
    return client.bucket(BUCKET)


@pytest.fixture(scope="module")
def raw_kserve():
    """KServe running EfficientNet-Lite0 on tensors exactly as received."""
    with kserve_onnx_raw_server() as server:
        yield server


@pytest.fixture(scope="module")
def raw_mlserver(tmp_path_factory):
    """MLServer running EfficientNet-Lite0 on tensors exactly as received."""
    with mlserver_onnx_raw_server(str(tmp_path_factory.mktemp("mlserver-raw"))) as server:
        yield server


@pytest.fixture(scope="module")
def lite0_module():
    """The local server with EfficientNet-Lite0 serving its embeddings (a test's own
    `lite0` fixture sets the switches it needs)."""
    with LocalServer(model=EFFICIENTNET_LITE0, model_name=EFFICIENTNET_LITE0,
                     embeddings=1) as server:
        yield server
