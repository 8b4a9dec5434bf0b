"""llama.cpp's `llama-server` (`kind: llamacpp`): an OpenAI-compatible server with LoRA adapters.

llama-server loads its adapters at start (`--lora FILE`, one per adapter; `--lora-init-without-apply`),
lists them at `GET /lora-adapters` as `[{"id", "path", "scale"}]`, and applies them per request with a
`lora: [{"id": N, "scale": S}]` body field. Which adapter a request gets is the gateway's choice, never
the client's (gateway/adapters/llamacpp.py): a client's own `lora` field is dropped.
"""

from __future__ import annotations

import orjson

from gateway.backends.http import BackendHTTP
from gateway.backends.openai_compat import OpenAICompatBackend
from gateway.errors import BackendClientError, ReplicaLacksModel
from gateway.settings import BackendSpec, Settings


def lora_ids(raw: bytes) -> list[tuple[int, str]]:
    """`GET /lora-adapters` as (id, path) pairs; anything malformed is skipped."""
    try:
        listing = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return []
    if not isinstance(listing, list):
        return []
    return [
        (int(e["id"]), str(e.get("path", ""))) for e in listing if isinstance(e, dict) and isinstance(e.get("id"), int)
    ]


class LlamaCppBackend(OpenAICompatBackend):
    kind = "llamacpp"
    own_fields = frozenset({"stream_options", "lora"})

    def __init__(self, spec: BackendSpec, settings: Settings) -> None:
        super().__init__(spec, settings)
        # /lora-adapters lives beside /v1: a client at the root.
        self._admin = BackendHTTP(
            spec.url,
            name=self.name,
            connect_timeout_s=settings.connect_timeout_s,
            address=spec.address,
            max_connections=4,
            headers=self._auth_headers,
        )

    async def lora_adapters(self) -> list[tuple[int, str]]:
        """The adapters the server loaded, as (id, path); none for a server built without the endpoint."""
        try:
            return lora_ids(await self._admin.read("GET", "/lora-adapters"))
        except (ReplicaLacksModel, BackendClientError):
            return []

    async def aclose(self) -> None:
        await self._admin.aclose()
        await super().aclose()
