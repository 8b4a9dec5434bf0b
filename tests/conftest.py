"""Fixtures shared by every test folder: real processes on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.llama import start_llama_server
from tests.support.processes import Service, redis_service


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
