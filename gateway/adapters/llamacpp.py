"""Adapters on llama.cpp's `llama-server`: loaded at its start, chosen per request.

Measured with the llama.cpp in llama-cpp-python 0.3.36's sdist: a request without `lora` (or with
`lora: []`) gets every loaded adapter at its global scale, which stays 1.0 even with
`--lora-init-without-apply`; a request that lists adapters sets the unlisted ones to 0. So every request
lists every adapter: the chosen one at 1, the others at 0, and all at 0 for the bare base.

A registered adapter is served by a replica when its base is one of the replica's models and one of the
loaded files is its `gguf` file: same file name, or a file name holding its short digest
(`orders-1a2b3c4d.gguf`). The server ignores the request's `model` field, so a name this replica does
not know is refused (a 404 that fails over) rather than answered by the base.
"""

from __future__ import annotations

from pathlib import PurePath

from gateway.adapters.plan import AdapterPlan
from gateway.adapters.registry import Adapter, AdapterRegistry
from gateway.backends.base import Extra
from gateway.backends.llamacpp import LlamaCppBackend


def matches(adapter: Adapter, loaded_path: str) -> bool:
    """Is the server's loaded file `loaded_path` this adapter's GGUF file?"""
    name = PurePath(loaded_path).name
    return name == PurePath(adapter.files["gguf"]).name or adapter.short_digest in name


class LlamaCppAdapters(AdapterPlan):
    def __init__(self, driver: LlamaCppBackend, *, registry: AdapterRegistry) -> None:
        super().__init__(replica=driver.name, registry=registry)
        self.driver = driver
        self._ids: dict[str, int] = {}  # adapter name -> the server's lora id
        self._all_ids: list[int] = []
        self._base_of: dict[str, str] = {}  # adapter name -> the base model name the server knows

    async def discover(self) -> list[str]:
        bases = frozenset(await self.driver.list_models())
        loaded = await self.driver.lora_adapters()
        self.bases = bases
        ids: dict[str, int] = {}
        for adapter in await self.registered("gguf"):
            found = next((i for i, path in loaded if matches(adapter, path)), None)
            if found is not None:
                ids[adapter.name] = found
        self._ids, self._all_ids = ids, [i for i, _ in loaded]
        self._base_of = {name: self._known[name].base for name in ids}
        return sorted(bases | set(ids))

    async def target(self, model: str) -> tuple[str, Extra]:
        if model not in self._ids and model not in self.bases:
            await self.discover()  # a server restarted with other --lora files, or a new registration
            if model not in self._ids and model not in self.bases:
                raise self.unknown(model)
        chosen = self._ids.get(model)
        name = self._base_of[model] if chosen is not None else model
        if not self._all_ids:
            return name, None
        # Every adapter listed, so none is applied by default (see the module docstring).
        return name, {"lora": [{"id": i, "scale": 1.0 if i == chosen else 0.0} for i in self._all_ids]}
