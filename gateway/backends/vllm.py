"""vLLM (`kind: vllm`): an OpenAI-compatible server that loads LoRA adapters at run time.

vLLM (started with `--enable-lora`, `--max-loras`, and `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`) loads
an adapter with `POST /v1/load_lora_adapter {"lora_name", "lora_path"}`, drops it with
`POST /v1/unload_lora_adapter {"lora_name"}`, lists loaded adapters in `/v1/models` (cards with a
`parent`), and a request selects one by naming it as `model`. Which adapters are loaded, and when they
are unloaded, is gateway/adapters/vllm.py's.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.backends.http import BackendHTTP
from gateway.backends.openai_compat import OpenAICompatBackend
from gateway.errors import BackendClientError, ReplicaLacksModel
from gateway.settings import BackendSpec, Settings


class VllmBackend(OpenAICompatBackend):
    kind = "vllm"

    def __init__(self, spec: BackendSpec, settings: Settings) -> None:
        super().__init__(spec, settings)
        self.max_adapters = spec.max_adapters
        self._admin = BackendHTTP(
            spec.url,
            name=self.name,
            connect_timeout_s=settings.connect_timeout_s,
            address=spec.address,
            max_connections=4,
            headers=self._auth_headers,
        )

    async def model_cards(self) -> list[dict[str, Any]]:
        """`/v1/models`' cards: base models, and the loaded adapters (a card with a `parent`)."""
        listing = await self._http.json("GET", "/models")
        return [c for c in listing.get("data", []) if isinstance(c, dict) and "id" in c]

    async def list_models(self) -> list[str]:
        return [c["id"] for c in await self.model_cards()]

    async def load_adapter(self, name: str, path: str) -> None:
        """Load the adapter at `path` as `name`; one already loaded under that name is success."""
        body = orjson.dumps({"lora_name": name, "lora_path": path})
        try:
            await self._admin.read("POST", "/v1/load_lora_adapter", body)
        except BackendClientError as exc:
            if "already been loaded" not in exc.message:
                raise

    async def unload_adapter(self, name: str) -> None:
        """Drop adapter `name`; one the server does not hold (any more) is success."""
        try:
            await self._admin.read("POST", "/v1/unload_lora_adapter", orjson.dumps({"lora_name": name}))
        except ReplicaLacksModel:
            pass  # "cannot be found": gone already

    async def aclose(self) -> None:
        await self._admin.aclose()
        await super().aclose()
