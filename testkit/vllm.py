"""Start the vLLM double (testkit/vllm_double.py) as a real process and read its state."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from testkit.processes import Service, free_port, python_service

VLLM_BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"


def start_vllm_double(
    *, port: int | None = None, tokens: int = 4, token_delay: float = 0.0, model: str = VLLM_BASE, timeout: float = 30.0
) -> Service:
    port = port or free_port()
    args = [
        "-m",
        "testkit.vllm_double",
        "--port",
        str(port),
        "--model",
        model,
        "--tokens",
        str(tokens),
        "--token-delay",
        str(token_delay),
    ]
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


def peft_folder(root: Path, name: str) -> Path:
    """What vLLM's load_lora_adapter checks for (the double only looks for adapter_config.json)."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    return folder


def register_adapter(
    gateway_url: str, admin_key: str, name: str, folder: Path, digest: str | None = None, base: str = VLLM_BASE
) -> dict[str, Any]:
    """PUT /admin/adapters/NAME with a PEFT folder (a fresh random digest unless one is given)."""
    r = httpx.put(
        f"{gateway_url}/admin/adapters/{name}",
        headers={"authorization": f"Bearer {admin_key}"},
        timeout=10,
        json={"base": base, "version": 1, "digest": digest or os.urandom(32).hex(), "files": {"peft": str(folder)}},
    )
    assert r.status_code == 200, r.text
    return r.json()
