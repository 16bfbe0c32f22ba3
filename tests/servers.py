"""Real model servers from PyPI for the tests, each installed in its own cached virtualenv
(`scripts/server_venv.sh`: model servers pin protobuf, grpcio, fastapi... apart from Beam) and
run as a subprocess on 127.0.0.1.

    python = server_python("kserve")
    with ServerProcess([python, script, "--http_port", str(port)], ready_url) as server:
        ...
"""
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Each server's pip requirements; changing a list reinstalls that venv.
REQUIREMENTS = {
    "kserve": ["kserve>=0.15,<0.22", "pillow>=10,<13"],
}
INSTALL_TIMEOUT_S = 900
STARTUP_TIMEOUT_S = 60
STOP_TIMEOUT_S = 10
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def server_python(name: str) -> str:
    """The python of the cached virtualenv holding server `name` (installed on first use)."""
    done = subprocess.run([os.path.join(ROOT, "scripts", "server_venv.sh"), name,
                           *REQUIREMENTS[name]], capture_output=True, text=True,
                          timeout=INSTALL_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"cannot install the {name} server: {done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with _OPENER.open(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


class ServerProcess:
    """A server subprocess, ready once `ready_url` answers 200; stopped on exit."""

    def __init__(self, argv, ready_url: str):
        self.argv, self.ready_url = list(argv), ready_url
        self.process = None
        self._log = None

    def __enter__(self):
        self._log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, cwd=ROOT)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not answers(self.ready_url):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(f"{self.argv[1]} did not start: {self.log()[-3000:]}")
            time.sleep(0.2)
        return self

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")

    def __exit__(self, *exc):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)
        self._log.close()
