"""Start the vLLM double (tests/doubles/vllm_double.py) as a real process and read its state."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx

from tests.support.processes import Service, free_port, python_service

VLLM_BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"


def start_vllm_double(*, port: int | None = None, tokens: int = 4, token_delay: float = 0.0,
                      model: str = VLLM_BASE, timeout: float = 30.0) -> Service:
    port = port or free_port()
    args = ["-m", "tests.doubles.vllm_double", "--port", str(port), "--model", model, "--tokens", str(tokens),
            "--token-delay", str(token_delay)]
    return python_service("vllm-double", args, port).start_and_wait_http("/v1/models", timeout=timeout)


@contextlib.contextmanager
def running_vllm_double(**kwargs: Any) -> Iterator[Service]:
    service = start_vllm_double(**kwargs)
    try:
        yield service
    finally:
        service.stop()


def vllm_stats(url: str) -> dict[str, Any]:
    return httpx.get(url + "/_control/stats", timeout=10).json()


def vllm_restart(url: str) -> None:
    """What a restarted vLLM looks like to its clients: every run-time adapter is gone."""
    httpx.post(url + "/_control/restart", timeout=10).raise_for_status()
