"""Publish a trained adapter for per-request serving: files into the shared adapters folder, then a
record in the gateway's adapter registry (`PUT /admin/adapters/NAME`).

- llama.cpp (`llamacpp` target) gets the adapter GGUF as `NAME-<digest8>.gguf`; llama-server loads its
  adapters at start (`--lora`), so the llamacpp service must be restarted to serve a new one.
- vLLM (`vllm` target) gets the PEFT folder as `NAME-<digest8>/`; the gateway loads it at run time.

The digest is the sha256 of the PEFT weights (adapter_model.safetensors), so the same training run
gives the same names whatever the targets. Files are copied before the registry learns of them, and
into a temporary name first, so the gateway never routes to a half-written adapter. NAME:vN and NAME
are both registered: NAME:vN stays on this version, NAME moves to the newest.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from trainer.backends import adapter_dir
from trainer.config import RunConfig, secret_from_environment
from trainer.errors import PushError, StageOrderError
from trainer.export import sha256_file

log = logging.getLogger(__name__)
ADAPTER_TARGETS = ("llamacpp", "vllm")


def _copy_atomically(source: Path, target: Path) -> None:
    if target.exists():
        return  # same digest, same content: published before
    partial = target.with_name(target.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial) if partial.is_dir() else partial.unlink()
    if source.is_dir():
        shutil.copytree(source, partial)
    else:
        shutil.copy2(source, partial)
    partial.rename(target)


def stage_files(cfg: RunConfig, info: dict[str, Any] | None, name: str) -> tuple[str, dict[str, str]]:
    """Copy what the push's targets need into the adapters folder; (digest, kind -> serving path)."""
    a = cfg.push.adapters
    assert a is not None  # the config refuses adapter targets without it
    peft = adapter_dir(cfg.output_dir)
    weights = peft / "adapter_model.safetensors"
    if not weights.is_file():
        raise StageOrderError(f"{weights} is missing: run `train` first")
    digest = sha256_file(weights)
    stem = f"{name}-{digest[:8]}"
    serving = Path(a.serving_dir) if a.serving_dir else a.dir
    a.dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    if "llamacpp" in cfg.push.targets:
        if info is None or "adapter" not in info["files"]:
            raise StageOrderError(
                "the llamacpp target needs the adapter GGUF: set export.adapter_gguf and run `export` again"
            )
        _copy_atomically(cfg.output_dir / "export" / info["files"]["adapter"]["file"], a.dir / f"{stem}.gguf")
        files["gguf"] = str(serving / f"{stem}.gguf")
    if "vllm" in cfg.push.targets:
        _copy_atomically(peft, a.dir / stem)
        files["peft"] = str(serving / stem)
    return digest, files


def register(cfg: RunConfig, names: list[str], record: dict[str, Any]) -> None:
    import httpx

    a = cfg.push.adapters
    assert a is not None
    key = secret_from_environment(a.admin_key_env, PushError)
    if not key:
        raise PushError(f"${a.admin_key_env} is not set: registering an adapter needs an admin API key")
    with httpx.Client(
        base_url=a.gateway_url, timeout=a.timeout_s, headers={"authorization": f"Bearer {key}"}
    ) as client:
        for name in names:
            try:
                response = client.put(f"/admin/adapters/{name}", json=record)
            except httpx.HTTPError as exc:
                raise PushError(f"registering adapter {name} with {a.gateway_url} failed: {exc}") from None
            if response.status_code != 200:
                raise PushError(f"the gateway refused adapter {name} ({response.status_code}): {response.text[:300]}")


def publish_adapter(cfg: RunConfig, info: dict[str, Any] | None, version: int) -> dict[str, Any]:
    """Stage the files and register NAME:vN and NAME; returns what the version's manifest records."""
    a = cfg.push.adapters
    assert a is not None
    name = a.name or cfg.ollama.model.replace("/", "-")
    digest, files = stage_files(cfg, info, name)
    record = {"base": a.base, "version": version, "digest": digest, "files": files}
    names = [f"{name}:v{version}", name]
    register(cfg, names, record)
    log.info("registered adapter %s with %s (%s)", " and ".join(names), a.gateway_url, ", ".join(files.values()))
    return {"names": names, "gateway": a.gateway_url, **record}
