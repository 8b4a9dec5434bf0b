"""llama.cpp's `llama-server` with LoRA adapters chosen per request (`kind: llamacpp`).

llama-server loads its adapters at start (`--lora FILE`, one per adapter; `--lora-init-without-apply`),
lists them at `GET /lora-adapters` as `[{"id", "path", "scale"}]`, and applies them per request with a
`lora: [{"id": N, "scale": S}]` field. Measured with the llama.cpp in llama-cpp-python 0.3.36's sdist:
a request without `lora` (or with `lora: []`) gets every adapter at its global scale, which stays 1.0
even with `--lora-init-without-apply`; a request that lists adapters sets the unlisted ones to 0. So
every request lists every adapter: the chosen one at 1, the others at 0, and all at 0 for the bare base.

A registered adapter (gateway/adapters/registry.py) is served by a replica when its base is one of the
replica's models and one of the loaded files is its `gguf` file: same file name, or a file name
holding its short digest (`orders-1a2b3c4d.gguf`). The server ignores the request's `model` field, so a
name this replica does not know is refused (a 404 that fails over) rather than answered by the base.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

import orjson

from gateway.adapters.registry import Adapter
from gateway.backends.adapter_backend import AdapterBackend
from gateway.errors import BackendClientError, ReplicaLacksModel


def matches(adapter: Adapter, loaded_path: str) -> bool:
    """Is the server's loaded file `loaded_path` this adapter's GGUF file?"""
    name = PurePath(loaded_path).name
    return name == PurePath(adapter.files["gguf"]).name or adapter.short_digest in name


def lora_ids(raw: bytes) -> list[tuple[int, str]]:
    """`GET /lora-adapters` as (id, path) pairs; anything malformed is skipped."""
    try:
        listing = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return []
    return [(int(e["id"]), str(e.get("path", ""))) for e in listing if isinstance(listing, list)
            and isinstance(e, dict) and isinstance(e.get("id"), int)]


class LlamaCppBackend(AdapterBackend):
    kind = "llamacpp"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ids: dict[str, int] = {}  # adapter name -> the server's lora id
        self._all_ids: list[int] = []
        self._base_of: dict[str, str] = {}  # adapter name -> the base model name the server knows

    async def list_models(self) -> list[str]:
        bases = frozenset(await super().list_models())
        try:
            loaded = lora_ids(await self._admin.read("GET", "/lora-adapters"))
        except (ReplicaLacksModel, BackendClientError):  # a server built without the endpoint: no adapters
            loaded = []
        ids: dict[str, int] = {}
        for adapter in await self.registered(bases, "gguf"):
            found = next((i for i, path in loaded if matches(adapter, path)), None)
            if found is not None:
                ids[adapter.name] = found
        self.bases, self._ids, self._all_ids = bases, ids, [i for i, _ in loaded]
        self._base_of = {name: self._known[name].base for name in ids}
        return sorted(bases | set(ids))

    async def _target(self, model: str) -> str:
        if model in self._ids or model in self.bases:
            return model
        await self.list_models()  # a server restarted with other --lora files, or a new registration
        if model in self._ids or model in self.bases:
            return model
        raise self._unknown(model)

    def _payload(self, req: Any, model: str, stream: bool | None) -> dict[str, Any]:
        body = super()._payload(req, model, stream)
        chosen = self._ids.get(model)
        if chosen is not None:
            body["model"] = self._base_of[model]
        elif model not in self.bases:  # dropped by a discovery since `_target`
            raise self._unknown(model)
        body.pop("lora", None)  # the gateway chooses adapters, never the client
        if self._all_ids:  # every adapter listed, so none is applied by default (see the docstring)
            body["lora"] = [{"id": i, "scale": 1.0 if i == chosen else 0.0} for i in self._all_ids]
        return body
