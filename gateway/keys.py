"""API keys: generation, peppered hashing, and the key store (Redis, or in-process without it).

A key is `sk-` + 43 url-safe characters (256 bits). Only HMAC-SHA256(pepper, key) is stored,
so a copy of Redis does not leak usable keys; the plain key is returned once, at creation.

Redis layout (one GET on the hot path):
  gw:key:h:<hash>  -> the key's record as JSON (includes its id)
  gw:key:id:<id>   -> <hash>   (for admin lookups by id)
  gw:keys          -> set of ids (for listing)

`CachedKeyLookup` sits in front of the store: a hit younger than `fresh_s` skips Redis, and a
hit younger than `stale_s` is still honoured while Redis is unavailable (degraded mode).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from typing import Protocol

import orjson

from gateway.errors import ClientError, InvalidRequest
from gateway.redis_state import RedisState, RedisUnavailable

KEY_PREFIX = "sk-"
SCOPES = frozenset({"inference", "admin"})


class KeyInputError(InvalidRequest):
    """Bad input for a key operation (unknown scope, bad limit, ...); a 400 for the operator."""


class KeyNotFound(ClientError):
    status = 404
    code = "key_not_found"


@dataclass(frozen=True, slots=True)
class ApiKey:
    """What the gateway knows about a key; never holds the plain secret."""

    id: str
    name: str
    owner: str
    created_at: float
    secret_hash: str
    scopes: frozenset[str] = frozenset({"inference"})
    models: tuple[str, ...] | None = None  # None: every model
    expires_at: float | None = None
    rpm: int | None = None
    tpm: int | None = None
    monthly_token_budget: int | None = None
    revoked: bool = False
    capture_percent: float | None = None  # share of this key's answers kept in the inference log; None: settings

    def allows_model(self, model: str) -> bool:
        return self.models is None or model in self.models

    def is_active(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return not self.revoked and (self.expires_at is None or now < self.expires_at)

    def to_json(self) -> bytes:
        data = asdict(self)
        data["scopes"] = sorted(self.scopes)
        return orjson.dumps(data)

    @classmethod
    def from_json(cls, raw: bytes | str) -> "ApiKey":
        data = orjson.loads(raw)
        data["scopes"] = frozenset(data["scopes"])
        data["models"] = tuple(data["models"]) if data.get("models") is not None else None
        return cls(**data)

    def public_view(self) -> dict:
        """The record as the admin API shows it: everything except the hash."""
        data = asdict(self)
        del data["secret_hash"]
        data["scopes"] = sorted(self.scopes)
        data["models"] = list(self.models) if self.models is not None else None
        return data


@dataclass(frozen=True, slots=True, kw_only=True)
class KeySpec:
    """What an operator asks for when creating a key."""

    name: str
    owner: str = ""
    scopes: frozenset[str] = frozenset({"inference"})
    models: tuple[str, ...] | None = None
    expires_at: float | None = None
    rpm: int | None = None
    tpm: int | None = None
    monthly_token_budget: int | None = None
    capture_percent: float | None = None

    def __post_init__(self) -> None:
        unknown = set(self.scopes) - SCOPES
        if unknown:
            raise KeyInputError(f"unknown scope(s) {sorted(unknown)}; allowed: {sorted(SCOPES)}")
        if not self.name.strip():
            raise KeyInputError("a key needs a non-empty name")
        for label, value in (("rpm", self.rpm), ("tpm", self.tpm), ("monthly_token_budget", self.monthly_token_budget)):
            if value is not None and value <= 0:
                raise KeyInputError(f"{label} must be a positive integer (or unset for no limit)")
        check_capture_percent(self.capture_percent)


def check_capture_percent(value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100):
        raise KeyInputError("capture_percent must be a number from 0 to 100 (or unset: the gateway's settings decide)")


def generate_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str, pepper: str) -> str:
    return hmac.digest(pepper.encode(), secret.encode(), "sha256").hex()


def new_record(spec: KeySpec, secret_hash: str) -> ApiKey:
    return ApiKey(
        id="key_" + secrets.token_hex(8), name=spec.name, owner=spec.owner, created_at=time.time(),
        secret_hash=secret_hash, scopes=frozenset(spec.scopes), models=spec.models,
        expires_at=spec.expires_at, rpm=spec.rpm, tpm=spec.tpm,
        monthly_token_budget=spec.monthly_token_budget, capture_percent=spec.capture_percent,
    )


LIMIT_FIELDS = ("rpm", "tpm", "monthly_token_budget", "models", "scopes", "expires_at", "name", "owner",
                "capture_percent")


class KeyStore(Protocol):
    async def create(self, spec: KeySpec) -> tuple[ApiKey, str]: ...
    async def find_by_hash(self, secret_hash: str) -> ApiKey | None: ...
    async def get(self, key_id: str) -> ApiKey | None: ...
    async def list(self) -> list[ApiKey]: ...
    async def save(self, record: ApiKey) -> None: ...


class MemoryKeyStore:
    """In-process store for development (no REDIS_URL); lost on restart."""

    def __init__(self, pepper: str) -> None:
        self.pepper = pepper
        self._by_hash: dict[str, ApiKey] = {}

    async def create(self, spec: KeySpec) -> tuple[ApiKey, str]:
        secret = generate_secret()
        record = new_record(spec, hash_secret(secret, self.pepper))
        await self.save(record)
        return record, secret

    async def find_by_hash(self, secret_hash: str) -> ApiKey | None:
        return self._by_hash.get(secret_hash)

    async def get(self, key_id: str) -> ApiKey | None:
        return next((r for r in self._by_hash.values() if r.id == key_id), None)

    async def list(self) -> list[ApiKey]:
        return sorted(self._by_hash.values(), key=lambda r: r.created_at)

    async def save(self, record: ApiKey) -> None:
        self._by_hash[record.secret_hash] = record


class RedisKeyStore:
    """Keys in Redis; every call raises `RedisUnavailable` rather than hang."""

    def __init__(self, redis: RedisState, pepper: str) -> None:
        self.redis = redis
        self.pepper = pepper

    async def create(self, spec: KeySpec) -> tuple[ApiKey, str]:
        secret = generate_secret()
        record = new_record(spec, hash_secret(secret, self.pepper))
        await self.save(record)
        return record, secret

    async def find_by_hash(self, secret_hash: str) -> ApiKey | None:
        raw = await self.redis.run("key_lookup", lambda r: r.get(f"gw:key:h:{secret_hash}"))
        return ApiKey.from_json(raw) if raw else None

    async def get(self, key_id: str) -> ApiKey | None:
        secret_hash = await self.redis.run("key_lookup", lambda r: r.get(f"gw:key:id:{key_id}"))
        return await self.find_by_hash(secret_hash.decode()) if secret_hash else None

    async def list(self) -> list[ApiKey]:
        ids = await self.redis.run("key_list", lambda r: r.smembers("gw:keys"))
        records = [await self.get(i.decode()) for i in sorted(ids)]
        return sorted((r for r in records if r is not None), key=lambda r: r.created_at)

    async def save(self, record: ApiKey) -> None:
        async def write(r) -> None:
            async with r.pipeline(transaction=True) as pipe:
                pipe.set(f"gw:key:h:{record.secret_hash}", record.to_json())
                pipe.set(f"gw:key:id:{record.id}", record.secret_hash)
                pipe.sadd("gw:keys", record.id)
                await pipe.execute()

        await self.redis.run("key_write", write)


async def update_key(store: KeyStore, key_id: str, **changes: object) -> ApiKey:
    """Change limits/models/scopes/expiry/revocation of an existing key and save it."""
    record = await store.get(key_id)
    if record is None:
        raise KeyNotFound(f"no key with id {key_id!r}")
    bad = set(changes) - set(LIMIT_FIELDS) - {"revoked"}
    if bad:
        raise KeyInputError(f"cannot change {sorted(bad)}")
    if "scopes" in changes:
        KeySpec(name=record.name, scopes=frozenset(changes["scopes"]))  # validates scope names
        changes["scopes"] = frozenset(changes["scopes"])
    if changes.get("models") is not None:
        changes["models"] = tuple(changes["models"])
    check_capture_percent(changes.get("capture_percent"))
    updated = replace(record, **changes)
    await store.save(updated)
    return updated


@dataclass(slots=True)
class _Cached:
    record: ApiKey
    at: float


@dataclass
class CachedKeyLookup:
    """Bounded in-process cache in front of a key store.

    fresh_s: skip the store entirely (hot path, and the delay before a revocation made on
    another replica is seen). stale_s: how long a key validated earlier keeps working while
    Redis is unavailable.
    """

    store: KeyStore
    pepper: str
    fresh_s: float = 5.0
    stale_s: float = 300.0
    max_entries: int = 10_000
    _entries: OrderedDict[str, _Cached] = field(default_factory=OrderedDict)
    # Keyed BLAKE2 digest of a presented secret -> its peppered HMAC, for secrets that matched a key.
    # Why: the HMAC goes through OpenSSL, whose code is cold again on every request when requests
    # come one at a time (~60 us measured on the 1-client path); BLAKE2 is built into Python and
    # ~5x cheaper cold. The key is random per process, so the map holds nothing reusable elsewhere.
    _hashes: dict[bytes, str] = field(default_factory=dict)
    _salt: bytes = field(default_factory=lambda: os.urandom(32))

    async def find(self, secret: str) -> ApiKey | None:
        """The record for a presented plain key, or None."""
        raw = secret.encode()
        seen = hashlib.blake2b(raw, key=self._salt, digest_size=16).digest()
        secret_hash = self._hashes.get(seen) or hash_secret(secret, self.pepper)
        record = await self._cached(secret_hash, lambda: self.store.find_by_hash(secret_hash))
        if record is None or not hmac.compare_digest(record.secret_hash, secret_hash):
            return None
        if seen not in self._hashes:  # only secrets of real keys: guesses must not fill the map
            if len(self._hashes) >= self.max_entries:
                self._hashes.clear()
            self._hashes[seen] = secret_hash
        return record

    async def find_id(self, key_id: str) -> ApiKey | None:
        """The record for a key id (a JWT's `key_id` claim), or None."""
        return await self._cached("id:" + key_id, lambda: self.store.get(key_id))

    async def _cached(self, cache_key: str, fetch) -> ApiKey | None:  # noqa: ANN001
        now = time.monotonic()
        cached = self._entries.get(cache_key)
        if cached is not None and now - cached.at < self.fresh_s:
            return cached.record
        try:
            record = await fetch()
        except RedisUnavailable:
            # Degraded: only keys that were valid recently keep working; unknown keys are refused.
            if cached is not None and now - cached.at < self.stale_s:
                return cached.record
            raise
        if record is not None:  # misses are not cached: guesses must not evict known keys
            self._remember(cache_key, record, now)
        return record

    def _remember(self, cache_key: str, record: ApiKey, now: float) -> None:
        self._entries[cache_key] = _Cached(record, now)
        self._entries.move_to_end(cache_key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def forget(self, record: ApiKey) -> None:
        """Drop a key from the cache so a change made here takes effect here at once."""
        self._entries.pop(record.secret_hash, None)
        self._entries.pop("id:" + record.id, None)
