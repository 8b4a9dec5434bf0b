"""Fixtures shared by every test folder: real processes on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testkit.llama import start_llama_server
from testkit.processes import Service, redis_service


@pytest.fixture(scope="session", autouse=True)
def session_data_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Gateways started without DATABASE_URL keep their SQLite file under $XDG_DATA_HOME/slm-stack/: a folder
    of this test session (inherited by every process it starts), never the user's own. Also the session's
    other environment defaults."""
    patch = pytest.MonkeyPatch()
    patch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("data-home")))
    # No load balancer sits in front of the gateways tests start: a SIGTERM stops them without a drain
    # delay (the drain's own tests set one).
    patch.setenv("GATEWAY_DRAIN_DELAY_S", "0")
    yield
    patch.undo()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[Service]:
    """One redis-server per test module; tests that need it empty flush it themselves."""
    service = redis_service().start().wait_port()
    yield service
    service.stop()


@pytest.fixture(scope="session")
def llama_server() -> Iterator[Service]:
    """One llama.cpp server with SmolLM2 for the whole session (loading it takes seconds)."""
    service = start_llama_server()
    yield service
    service.stop()
