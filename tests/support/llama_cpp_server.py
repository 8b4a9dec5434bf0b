"""Run llama.cpp's own `llama-server` (built by tests/support/llama_server.py) with LoRA adapters."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from testkit.llama_server import llama_server_binary
from testkit.processes import Service, free_port


def llama_cpp_service(
    model: Path,
    *,
    alias: str,
    loras: Sequence[Path] = (),
    port: int | None = None,
    n_ctx: int = 2048,
    parallel: int = 2,
    threads: int = 2,
) -> Service:
    """A not yet started llama-server; `--lora-init-without-apply` as the compose service runs it."""
    port = port or free_port()
    argv = [
        str(llama_server_binary()),
        "-m",
        str(model),
        "--alias",
        alias,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ctx-size",
        str(n_ctx),
        "--parallel",
        str(parallel),
        "--threads",
        str(threads),
    ]
    for lora in loras:
        argv += ["--lora", str(lora)]
    if loras:
        argv.append("--lora-init-without-apply")
    return Service(name=f"llama-server-{alias}", argv=argv, port=port)


def start_llama_cpp(model: Path, *, timeout: float = 120.0, **kwargs) -> Service:
    """Started and ready: /health answers 200 once the model is loaded (503 before)."""
    return llama_cpp_service(model, **kwargs).start_and_wait_http("/health", timeout=timeout)


def rss_bytes(service: Service) -> int:
    """Resident memory of the server process now (VmRSS)."""
    assert service.proc is not None
    for line in Path(f"/proc/{service.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS line")
