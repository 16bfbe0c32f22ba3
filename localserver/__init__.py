"""The project's local prediction server and a helper to run it as a subprocess.

``python -m localserver --host 127.0.0.1 --port 0 [switches]`` serves the ML
Engine, AutoML v1beta1, Vertex AI (also ``:rawPredict``) and v2 (Open Inference Protocol)
predict protocols with a small colour
classifier (see :mod:`localserver.server` and :mod:`localserver.model`), and, with a model
that has an embedding, Vertex AI multimodal embeddings (:mod:`localserver.embeddings`).

:class:`LocalServer` starts that command from Python and talks to its admin
routes with ``urllib`` only, so importing this package stays cheap (no
aiohttp, no Pillow)::

    with LocalServer(latency_ms=50, quota_qps=10) as server:
        url = server.endpoint("vertex")
        ...
        print(server.stats()["max_in_flight"])
"""

import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Optional

__all__ = ["LocalServer", "PROTOCOLS", "endpoint_paths"]

PROTOCOLS = ("mlengine", "automl", "vertex", "v2")
PROJECT = "local-project"
LOCATION = "us-central1"
ENDPOINT_ID = "local-endpoint"
DEFAULT_MODEL_NAME = "local-color-classifier"
MULTIMODAL_MODEL = "multimodalembedding@001"

STARTUP_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
ADMIN_TIMEOUT_S = 10.0
_POLL_INTERVAL_S = 0.1
_READY_PREFIX = "LISTENING "
#: Directory holding the ``localserver`` package, put on the child's PYTHONPATH.
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: urllib opener that never goes through an HTTP proxy (the server is local).
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def endpoint_paths(model_name: str = DEFAULT_MODEL_NAME) -> Dict[str, str]:
    """Each protocol's predict path on the local server for the model ``model_name``:
    ``mlengine``, ``automl``, ``vertex``, ``raw`` (Vertex ``:rawPredict``), ``v2`` and
    ``multimodal`` (Vertex multimodal embeddings)."""
    model = urllib.parse.quote(model_name, safe="")
    location = f"projects/{PROJECT}/locations/{LOCATION}"
    return {
        "mlengine": f"/v1/projects/{PROJECT}/models/{model}:predict",
        "automl": f"/v1beta1/{location}/models/{model}:predict",
        "vertex": f"/v1/{location}/endpoints/{ENDPOINT_ID}:predict",
        "raw": f"/v1/{location}/endpoints/{ENDPOINT_ID}:rawPredict",
        "v2": f"/v2/models/{model}/infer",
        "multimodal": f"/v1/{location}/publishers/google/models/{MULTIMODAL_MODEL}:predict",
    }


class LocalServer:
    """Context manager running ``python -m localserver`` as a subprocess.

    Keyword arguments are CLI switches without the dashes, e.g.
    ``LocalServer(latency_ms=500, capacity=4)``; ``host`` and ``port`` default
    to ``127.0.0.1`` and ``0`` (a free port).
    """

    def __init__(self, **switches: Any):
        self.switches: Dict[str, Any] = {"host": "127.0.0.1", "port": 0, **switches}
        self.url: str = ""
        self.process: Optional[subprocess.Popen] = None
        self.returncode: Optional[int] = None
        self._stderr = None

    # -- lifecycle ---------------------------------------------------------

    def command(self) -> List[str]:
        """The command line that :meth:`start` runs."""
        argv = [sys.executable, "-m", "localserver"]
        for name, value in self.switches.items():
            argv += [f"--{name}", str(value)]
        return argv

    def start(self) -> "LocalServer":
        """Start the server and wait (at most 20 s) until it is listening."""
        if self.process is not None:
            raise RuntimeError("LocalServer already started")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_PACKAGE_PARENT, env.get("PYTHONPATH")) if p)
        self._stderr = tempfile.TemporaryFile()
        self.returncode = None
        self.process = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=self._stderr, env=env)
        try:
            self.url = self._wait_until_listening(STARTUP_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_listening(self, timeout: float) -> str:
        """Read the child's stdout until the ``LISTENING <url>`` line."""
        deadline = time.monotonic() + timeout
        buffer = b""
        fd = self.process.stdout.fileno()
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            for _ in range(int(timeout / _POLL_INTERVAL_S) + 1):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if not selector.select(min(remaining, _POLL_INTERVAL_S)):
                    if self.process.poll() is not None:
                        break
                    continue
                chunk = os.read(fd, 4096)
                if not chunk:  # EOF: the child exited
                    break
                buffer += chunk
                for line in buffer.decode("utf-8", "replace").splitlines(keepends=True):
                    if line.startswith(_READY_PREFIX) and line.endswith("\n"):
                        return line[len(_READY_PREFIX):].strip()
        self.process.poll()
        raise RuntimeError(
            f"local server did not start within {timeout:g} s "
            f"(exit code {self.process.returncode}); "
            f"stdout: {buffer.decode('utf-8', 'replace')!r}; stderr:\n{self.stderr()}")

    def stderr(self) -> str:
        """Everything the server wrote to stderr so far."""
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")

    def stop(self) -> None:
        """SIGTERM the server, wait up to 10 s, then kill it."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT_S)
        self.returncode = process.returncode
        process.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- URLs --------------------------------------------------------------

    def endpoint(self, protocol: str) -> str:
        """Full predict URL for ``"mlengine"``, ``"automl"``, ``"vertex"``, ``"v2"``,
        ``"raw"`` (Vertex ``:rawPredict``) or ``"multimodal"`` (Vertex multimodal
        embeddings)."""
        if not self.url:
            raise RuntimeError("LocalServer not started")
        paths = endpoint_paths(str(self.switches.get("model_name", DEFAULT_MODEL_NAME)))
        if protocol not in paths:
            raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
        return self.url + paths[protocol]

    # -- admin routes ------------------------------------------------------

    def _call(self, method: str, path: str, payload: Optional[dict] = None) -> dict:
        if not self.url:
            raise RuntimeError("LocalServer not started")
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        request = urllib.request.Request(
            self.url + path, data=data, method=method,
            headers={"Content-Type": "application/json"})
        try:
            with _OPENER.open(request, timeout=ADMIN_TIMEOUT_S) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = exc.read().decode("utf-8", "replace")
            raise RuntimeError(f"{method} {path} failed: HTTP {exc.code}: {body}") from None

    @classmethod
    def attach(cls, url: str) -> "LocalServer":
        """A handle on a server already running at ``url`` (started elsewhere; not stopped)."""
        handle = cls()
        handle.url = url.rstrip("/")
        return handle

    def stats(self) -> Dict[str, Any]:
        """``GET /stats``; ``per_second`` keys are converted back to ``int``."""
        stats = self._call("GET", "/stats")
        stats["per_second"] = {int(k): v for k, v in stats["per_second"].items()}
        return stats

    def reset_stats(self) -> None:
        """``POST /stats/reset``: zero every counter."""
        self._call("POST", "/stats/reset")

    def configure(self, **switches: Any) -> Dict[str, Any]:
        """``POST /config``: change switches at runtime; returns the full config."""
        config = self._call("POST", "/config", switches)
        self.switches.update(switches)
        return config
