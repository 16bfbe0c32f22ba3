"""Shared fixtures: the project's own prediction server over loopback (helpers: helpers.py).

Every test that talks to an endpoint uses a real `python -m localserver` subprocess on
127.0.0.1. Tests that change its switches get their own server (`make_server`), or reset
it (`server` resets stats and switches for each test).
"""
import pytest

from localserver import LocalServer
from tests.helpers import DEFAULT_SWITCHES


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

