"""Fixtures for the harness's own tests: a real mock backend process on a free port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testkit.processes import Service, free_port, python_service

TOKENS = 12
TOKEN_DELAY_MS = 4.0


@pytest.fixture(scope="module")
def mock() -> Iterator[Service]:
    port = free_port()
    svc = python_service(
        "bench-mock",
        [
            "-m",
            "testkit.mock_backend",
            "--port",
            str(port),
            "--tokens",
            str(TOKENS),
            "--token-delay-ms",
            str(TOKEN_DELAY_MS),
            "--plain-delay-ms",
            "0",
        ],
        port,
    )
    svc.start()
    try:
        svc.wait_http("/v1/models", timeout=20)
        yield svc
    finally:
        svc.stop()
