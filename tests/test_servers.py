"""The tests' server processes (tests/servers.py) start again on fresh ports when the port
they were given was taken before they could bind it."""
import socket
import sys

import pytest

from tests.servers import answers, free_port, ServerProcess, START_ATTEMPTS


def http_server(ports):
    """A command for Python's http.server on the next of `ports` (a fresh one when empty)."""
    def command():
        port = ports.pop(0) if ports else free_port()
        command.ports.append(port)
        return ([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                f"http://127.0.0.1:{port}")
    command.ports = []
    return command


def test_a_server_whose_port_was_taken_starts_again_on_a_fresh_one():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        command = http_server([taken.getsockname()[1]])
        with ServerProcess(command, "/") as server:
            assert len(command.ports) == 2
            assert server.url == f"http://127.0.0.1:{command.ports[1]}"
            assert answers(server.url + "/")
    assert server.process.poll() is not None  # stopped on exit


def test_a_server_that_never_comes_up_fails_after_the_last_attempt():
    sockets = []
    try:
        for _ in range(START_ATTEMPTS):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        command = http_server([s.getsockname()[1] for s in sockets])
        with pytest.raises(RuntimeError, match="did not start"):
            with ServerProcess(command, "/"):
                pass
        assert len(command.ports) == START_ATTEMPTS
    finally:
        for s in sockets:
            s.close()


def test_a_server_that_fails_for_another_reason_is_not_started_again():
    def command():
        command.calls += 1
        return [sys.executable, "-c", "raise SystemExit('no model here')"], \
            f"http://127.0.0.1:{free_port()}"
    command.calls = 0
    with pytest.raises(RuntimeError, match="no model here"):
        with ServerProcess(command, "/"):
            pass
    assert command.calls == 1
