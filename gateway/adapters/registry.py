"""The adapter registry: which LoRA adapters exist, on which base model, and where their files are.

An adapter is served under its own public model name (its registered `name`, e.g. `orders` or
`orders:v2`): each replica that can serve it reports it among its models (gateway/adapters/serving.py),
so `pool.resolve(name)` finds those replicas, and the replica's plan (llamacpp.py, vllm.py here) turns
the request into "base model + this adapter" in its server's own terms.

Stored in Redis (hash `gw:adapters`, one JSON record per name) when `REDIS_URL` is set, so every
gateway replica and the trainer's `push` see the same set; in-process otherwise (development).
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Literal, Protocol

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.errors import ClientError, InvalidRequest, ModelNotFound
from gateway.state.redis import RedisState

NAME_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9._:/-]{0,127}$"
REDIS_KEY = "gw:adapters"
MAX_VERSION = 1_000_000
MAX_PATH = 4096  # PATH_MAX on Linux
# The file kinds a driver looks for: llama.cpp loads GGUF adapters, vLLM loads PEFT folders.
FILE_KINDS = ("gguf", "peft")


class AdapterNotFound(ModelNotFound):
    code = "adapter_not_found"


class AdapterBaseMismatch(ClientError):
    code = "adapter_base_mismatch"


class AdapterSpec(BaseModel):
    """What `PUT /admin/adapters/{name}` takes (the name comes from the path)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: str = Field(min_length=1, max_length=256, description="Public name of the base model it was trained on.")
    version: int = Field(1, ge=1, le=MAX_VERSION, description="The trainer's version number (NAME:vN).")
    digest: str = Field(
        pattern=r"^(sha256:)?[0-9a-fA-F]{64}$",
        description="sha256 of the adapter's weights (hex, optionally `sha256:`-prefixed).",
    )
    files: dict[Literal["gguf", "peft"], Annotated[str, Field(min_length=1, max_length=MAX_PATH)]] = Field(
        min_length=1,
        description="kind -> path on the serving side: `gguf` (llama.cpp) "
        "is a .gguf file, `peft` (vLLM) a PEFT adapter folder.",
    )

    @field_validator("digest")
    @classmethod
    def _hex_digest(cls, v: str) -> str:
        v = v.removeprefix("sha256:").lower()
        if not re.fullmatch(r"[0-9a-f]{64}", v):
            raise ValueError("must be a sha256 hex digest (64 hex digits)")
        return v

    @field_validator("files")
    @classmethod
    def _known_kinds(cls, v: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(v) - set(FILE_KINDS))
        if unknown:
            raise ValueError(f"unknown file kinds {unknown}; expected some of {list(FILE_KINDS)}")
        if any(not path for path in v.values()):
            raise ValueError("file paths must not be empty")
        return v


class Adapter(AdapterSpec):
    name: str = Field(pattern=NAME_PATTERN)
    updated_at: float = Field(default_factory=time.time)

    @property
    def short_digest(self) -> str:
        return self.digest[:8]

    def public_view(self) -> dict[str, object]:
        return {"object": "adapter", **self.model_dump(mode="json")}


def check_name(name: str) -> str:
    if not re.fullmatch(NAME_PATTERN, name):
        raise InvalidRequest(f"adapter name {name!r} must match {NAME_PATTERN}", param="name")
    return name


class AdapterStore(Protocol):
    async def list(self) -> list[Adapter]: ...
    async def get(self, name: str) -> Adapter | None: ...
    async def put(self, adapter: Adapter) -> None: ...
    async def delete(self, name: str) -> bool: ...


class MemoryAdapterStore:
    """One process only: adapters registered here vanish with it (development, tests)."""

    def __init__(self) -> None:
        self._adapters: dict[str, Adapter] = {}

    async def list(self) -> list[Adapter]:
        return sorted(self._adapters.values(), key=lambda a: a.name)

    async def get(self, name: str) -> Adapter | None:
        return self._adapters.get(name)

    async def put(self, adapter: Adapter) -> None:
        self._adapters[adapter.name] = adapter

    async def delete(self, name: str) -> bool:
        return self._adapters.pop(name, None) is not None


class RedisAdapterStore:
    def __init__(self, redis: RedisState) -> None:
        self.redis = redis

    async def list(self) -> list[Adapter]:
        raw = await self.redis.run("adapter_list", lambda r: r.hvals(REDIS_KEY))
        return sorted((a for a in map(_parse, raw) if a is not None), key=lambda a: a.name)

    async def get(self, name: str) -> Adapter | None:
        raw = await self.redis.run("adapter_get", lambda r: r.hget(REDIS_KEY, name))
        return _parse(raw) if raw else None

    async def put(self, adapter: Adapter) -> None:
        await self.redis.run("adapter_put", lambda r: r.hset(REDIS_KEY, adapter.name, adapter.model_dump_json()))

    async def delete(self, name: str) -> bool:
        return bool(await self.redis.run("adapter_delete", lambda r: r.hdel(REDIS_KEY, name)))


def _parse(raw: bytes | str) -> Adapter | None:
    try:
        return Adapter.model_validate(orjson.loads(raw))
    except (orjson.JSONDecodeError, ValidationError):
        return None  # a record written by a newer gateway: skip it rather than fail every listing


class AdapterRegistry:
    """The registry every part of the gateway uses (built once, on `app.state.adapters`)."""

    def __init__(self, store: AdapterStore) -> None:
        self.store = store

    @classmethod
    def for_redis(cls, redis: RedisState) -> AdapterRegistry:
        return cls(RedisAdapterStore(redis) if redis.configured else MemoryAdapterStore())

    async def list(self) -> list[Adapter]:
        return await self.store.list()

    async def get(self, name: str) -> Adapter:
        adapter = await self.store.get(check_name(name))
        if adapter is None:
            raise AdapterNotFound(f"no adapter named {name!r} is registered", param="name")
        return adapter

    async def register(self, name: str, spec: AdapterSpec) -> Adapter:
        adapter = Adapter(name=check_name(name), **spec.model_dump())
        await self.store.put(adapter)
        return adapter

    async def remove(self, name: str) -> Adapter:
        adapter = await self.get(name)
        await self.store.delete(name)
        return adapter

    async def check_base(self, name: str, base: str) -> Adapter:
        """For a route variant `{"model": BASE, "adapter": NAME}`: the adapter, if it was trained on BASE
        (a 400 otherwise: an adapter applied to another base model answers nonsense)."""
        adapter = await self.get(name)
        if adapter.base != base:
            raise AdapterBaseMismatch(
                f"adapter {name!r} was trained on base model {adapter.base!r}, not {base!r}", param="adapter"
            )
        return adapter
