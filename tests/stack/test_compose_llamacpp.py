"""The optional `llamacpp` service (profile `adapters`): one base model and every adapter GGUF in the
shared `adapters` volume, CPU image by default and the CUDA build with the GPU override. Static checks:
the compose tier cannot run llama.cpp's image here; tests/gateway/test_adapters_llamacpp_e2e.py runs
the same flags on a llama-server built from source."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.stack.compose_cli import BASE, compose_binary, compose_config, generated_env, yaml_model


@pytest.fixture(scope="module")
def service() -> dict:
    model = compose_config(generated_env()) if compose_binary() else yaml_model()
    return model["services"]["llamacpp"]


def test_the_service_is_optional_and_serves_the_adapters_volume_read_only(service):
    assert service["profiles"] == ["adapters"]
    volumes = service["volumes"]
    mount = volumes[0] if isinstance(volumes[0], dict) else None
    if mount:
        assert (mount["source"], mount["target"], mount.get("read_only")) == ("adapters", "/adapters", True)
    else:
        assert volumes == ["adapters:/adapters:ro"]
    assert "adapters" in yaml_model([BASE])["volumes"]


def test_cpu_image_by_default_and_the_cuda_build_with_the_gpu_override(service):
    base = yaml_model([BASE])["services"]["llamacpp"]["image"]
    assert base.startswith("ghcr.io/ggml-org/llama.cpp:server-b")
    assert service["image"] == base.replace(":server-b", ":server-cuda-b")  # the same release, CUDA build


def _start_script(service: dict) -> str:
    script = service["command"][0] if isinstance(service["command"], list) else service["command"]
    return script.replace("$$", "$")  # compose's escape, as the shell in the container sees it


def test_the_start_script_loads_the_base_and_each_adapter_without_applying_them(service, tmp_path: Path):
    """Run the container's start script with `sh` against a folder like the volume, with a stand-in
    llama-server that prints its arguments."""
    if shutil.which("sh") is None:
        pytest.skip("no sh")
    for name in ("base.gguf", "orders-1a2b3c4d.gguf", "reviews-5e6f7a8b.gguf", "notes.txt"):
        (tmp_path / name).write_text("x")
    fake = tmp_path / "llama-server"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    fake.chmod(0o755)
    script = _start_script(service).replace("/adapters", str(tmp_path)).replace("/app/llama-server", str(fake))
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    args = done.stdout.split("\n")
    assert args[args.index("-m") + 1] == str(tmp_path / "base.gguf")
    loras = [args[i + 1] for i, a in enumerate(args) if a == "--lora"]
    assert sorted(loras) == [str(tmp_path / "orders-1a2b3c4d.gguf"), str(tmp_path / "reviews-5e6f7a8b.gguf")]
    assert "--lora-init-without-apply" in args
