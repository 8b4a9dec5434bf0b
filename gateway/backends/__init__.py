"""Drivers: one per kind of inference server, each speaking its server's API and answering in OpenAI's
shapes (gateway/backends/base.py). No routing, no policy: which replica, and which adapter, is decided
above them."""

from __future__ import annotations

from gateway.backends.base import Backend
from gateway.backends.llamacpp import LlamaCppBackend
from gateway.backends.ollama import OllamaBackend
from gateway.backends.openai_compat import OpenAICompatBackend
from gateway.backends.vllm import VllmBackend

DRIVERS: dict[str, type[Backend]] = {
    "ollama": OllamaBackend,
    "openai": OpenAICompatBackend,
    "llamacpp": LlamaCppBackend,
    "vllm": VllmBackend,
}
