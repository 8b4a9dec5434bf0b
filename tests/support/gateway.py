"""Start the real gateway (`python -m gateway`) as a process with a given configuration."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

from testkit.processes import Service, free_port, python_service

ADMIN_KEY = "sk-test-admin-0123456789abcdef"


def backend_list(*specs: tuple[str, str] | dict[str, Any]) -> str:
    """backend_list(("ollama", url), ("openai", url2)) -> the GATEWAY_BACKENDS JSON."""
    out = []
    for spec in specs:
        out.append(spec if isinstance(spec, dict) else {"kind": spec[0], "url": spec[1]})
    return json.dumps(out)


def start_gateway(
    backends: Sequence[tuple[str, str] | dict[str, Any]],
    *,
    env: dict[str, str] | None = None,
    port: int | None = None,
    timeout: float = 30.0,
) -> Service:
    port = port or free_port()
    full_env = {
        "GATEWAY_PORT": str(port),
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_BACKENDS": backend_list(*backends),
        "GATEWAY_ADMIN_KEY": ADMIN_KEY,
        "GATEWAY_DISCOVERY_INTERVAL_S": "1",
        "GATEWAY_LOG_LEVEL": "info",
        "REDIS_URL": "",
        **(env or {}),
    }
    if not full_env["REDIS_URL"]:
        del full_env["REDIS_URL"]
    service = python_service("gateway", ["-m", "gateway"], port, env=full_env).start_and_wait_http(
        "/healthz", timeout=timeout
    )
    return service


@contextlib.contextmanager
def running_gateway(backends: Sequence[tuple[str, str] | dict[str, Any]], **kwargs: Any) -> Iterator[Service]:
    service = start_gateway(backends, **kwargs)
    try:
        yield service
    finally:
        service.stop()
