"""Real model servers from PyPI for the tests, each installed in its own cached virtualenv
(`scripts/server_venv.sh`: model servers pin protobuf, grpcio, fastapi... apart from Beam) and
run as a subprocess on 127.0.0.1.

    def command():  # a fresh port each time: the server may be started again
        port = free_port()
        return [server_python("kserve"), script, "--http_port", str(port)], \
            f"http://127.0.0.1:{port}"
    with ServerProcess(command, "/v2/health/ready") as server:
        ...  # server.url: the base URL it answers on
"""
import json
import os
import re
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Each server's pip requirements; changing a list reinstalls that venv. onnxruntime and numpy
# are for the raw EfficientNet-Lite0 servers (model_servers/*_onnx_raw.py).
REQUIREMENTS = {
    "kserve": ["kserve>=0.15,<0.22", "pillow>=10,<13", "onnxruntime>=1.17,<2",
               "numpy>=1.24,<3"],
    "mlserver": ["mlserver>=1.6,<1.8", "pillow>=10,<13", "onnxruntime>=1.17,<2",
                 "numpy>=1.24,<3"],
}
MODEL_SERVERS = os.path.join(ROOT, "tests", "model_servers")
INSTALL_TIMEOUT_S = 900
STARTUP_TIMEOUT_S = 60
STOP_TIMEOUT_S = 10
# A port free when picked may be bound by another process (any outgoing connection takes
# one) before the server binds it: the server then exits saying so, and starts again on
# fresh ports.
START_ATTEMPTS = 3
PORT_TAKEN = re.compile(r"address already in use", re.IGNORECASE)
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def server_python(name: str) -> str:
    """The python of the cached virtualenv holding server `name` (installed on first use)."""
    done = subprocess.run([os.path.join(ROOT, "scripts", "server_venv.sh"), name,
                           *REQUIREMENTS[name]], capture_output=True, text=True,
                          timeout=INSTALL_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"cannot install the {name} server: {done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


def listening(port: int, process: subprocess.Popen, timeout_s: float, what: str) -> bool:
    """Wait until `process` listens on `port` (True) or exits (False); RuntimeError naming
    `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen within {timeout_s} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(process: subprocess.Popen):
    """Terminate a server process; kill it if it does not end within STOP_TIMEOUT_S."""
    process.terminate()
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_TIMEOUT_S)


def answers(url: str) -> bool:
    try:
        with _OPENER.open(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


class ServerProcess:
    """A server subprocess, ready once `<url><ready_path>` answers 200; stopped on exit.
    `command()` gives (argv, base URL) for a fresh pick of ports; it is called again, up to
    START_ATTEMPTS times in all, when the server exits because its port was taken."""

    def __init__(self, command, ready_path: str, env=None):
        self.command, self.ready_path, self.env = command, ready_path, env
        self.process = None
        self.url = None
        self._log = None

    def __enter__(self):
        for attempt in range(1, START_ATTEMPTS + 1):
            argv, self.url = self.command()
            self._log = tempfile.TemporaryFile()
            self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, cwd=ROOT, env=self.env)
            if self._ready():
                return self
            log, exited = self.log(), self.process.poll() is not None
            self.__exit__(None, None, None)
            if not (exited and PORT_TAKEN.search(log)) or attempt == START_ATTEMPTS:
                raise RuntimeError(f"{argv[1]} did not start: {log[-3000:]}")
        raise AssertionError("unreachable")

    def _ready(self) -> bool:
        """True once the server answers while still running; False if it exits first or
        does not answer within STARTUP_TIMEOUT_S."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if answers(self.url + self.ready_path):
                return self.process.poll() is None
            time.sleep(0.2)
        return False

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")

    def __exit__(self, *exc):
        if self.process.poll() is None:
            stop(self.process)
        self._log.close()


def _env() -> dict:
    """The environment of a model server: the repository (its colour model) importable."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join((ROOT, MODEL_SERVERS))}


def kserve_server(model_name: str = "colour") -> ServerProcess:
    """KServe's ModelServer with the colour model (`tests/model_servers/kserve_colour.py`)
    as MODEL (BYTES input) and MODEL-pixels (UINT8 input); `.url` is its base URL."""
    script = os.path.join(MODEL_SERVERS, "kserve_colour.py")

    def command():
        port = free_port()
        return ([server_python("kserve"), script, "--model_name", model_name,
                 "--http_port", str(port)], f"http://127.0.0.1:{port}")

    return ServerProcess(command, f"/v2/models/{model_name}/ready", _env())


def mlserver_server(folder: str, model_name: str = "colour") -> ServerProcess:
    """MLServer with the colour runtime (`tests/model_servers/mlserver_colour.py`) as
    MODEL, its settings written under `folder`; `.url` is its base URL."""
    model_dir = os.path.join(folder, model_name)
    os.makedirs(model_dir, exist_ok=True)
    tensors = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
               "outputs": [{"name": "labels", "datatype": "BYTES", "shape": [-1, 8]},
                           {"name": "scores", "datatype": "FP32", "shape": [-1, 8]}]}
    with open(os.path.join(model_dir, "model-settings.json"), "w", encoding="utf-8") as f:
        json.dump({"name": model_name, "implementation": "mlserver_colour.ColourRuntime",
                   **tensors}, f)
    return _mlserver(folder, model_name)


def _mlserver(folder: str, model_name: str) -> ServerProcess:
    """`mlserver start folder` on fresh ports, ready once MODEL is."""
    mlserver = os.path.join(os.path.dirname(server_python("mlserver")), "mlserver")

    def command():  # the settings name fresh ports each time
        port, grpc_port, metrics_port = free_port(), free_port(), free_port()
        with open(os.path.join(folder, "settings.json"), "w", encoding="utf-8") as f:
            json.dump({"host": "127.0.0.1", "http_port": port, "grpc_port": grpc_port,
                       "metrics_port": metrics_port, "parallel_workers": 0}, f)
        return [mlserver, "start", folder], f"http://127.0.0.1:{port}"

    return ServerProcess(command, f"/v2/models/{model_name}/ready", _env())


RAW_MODEL = "efficientnet_lite0"
RAW_MODEL_PATH = os.path.join(ROOT, "localserver", "models", "efficientnet_lite0.onnx")
# EfficientNet-Lite0's tensors, which both raw servers check against the graph.
RAW_INPUT = {"name": "image", "datatype": "FP32", "shape": [-1, 3, 224, 224]}
RAW_OUTPUT = {"name": "scores", "datatype": "FP32", "shape": [-1, 1000]}
RAW_EMBEDDING = {"name": "embedding", "datatype": "FP32", "shape": [-1, 1280]}


def kserve_onnx_raw_server(model_name: str = RAW_MODEL, embeddings: bool = False
                           ) -> ServerProcess:
    """KServe's ModelServer running EfficientNet-Lite0 on tensors as received
    (`tests/model_servers/kserve_onnx_raw.py`) as MODEL, answering its `embedding` output
    too with `embeddings`; `.url` is its base URL."""
    script = os.path.join(MODEL_SERVERS, "kserve_onnx_raw.py")

    def command():
        port = free_port()
        return ([server_python("kserve"), script, "--model_name", model_name,
                 "--model_path", RAW_MODEL_PATH, "--http_port", str(port),
                 *(["--embeddings"] if embeddings else [])],
                f"http://127.0.0.1:{port}")

    return ServerProcess(command, f"/v2/models/{model_name}/ready", _env())


def mlserver_onnx_raw_server(folder: str, model_name: str = RAW_MODEL,
                             embeddings: bool = False) -> ServerProcess:
    """MLServer running EfficientNet-Lite0 on tensors as received
    (`tests/model_servers/mlserver_onnx_raw.py`) as MODEL, its settings written under
    `folder` (declaring the `embedding` output too with `embeddings`); `.url` is its base
    URL."""
    model_dir = os.path.join(folder, model_name)
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "model-settings.json"), "w", encoding="utf-8") as f:
        json.dump({"name": model_name, "implementation": "mlserver_onnx_raw.OnnxRawRuntime",
                   "parameters": {"uri": RAW_MODEL_PATH},
                   "inputs": [RAW_INPUT],
                   "outputs": [RAW_OUTPUT, *([RAW_EMBEDDING] if embeddings else [])]}, f)
    return _mlserver(folder, model_name)


if __name__ == "__main__":
    # `python3 tests/servers.py [NAME...]`: install those servers' virtualenvs (default: all);
    # run_tests.sh starts this in the background while the project's own venv is checked.
    import sys
    for server in sys.argv[1:] or REQUIREMENTS:
        server_python(server)
