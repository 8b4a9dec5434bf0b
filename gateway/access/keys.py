"""API keys: generation, peppered hashing, and the key store (Redis, or in-process without it).

A key is `sk-` + 43 url-safe characters (256 bits). Only HMAC-SHA256(pepper, key) is stored,
so a copy of Redis does not leak usable keys; the plain key is returned once, at creation.

Redis layout (one GET on the hot path):
  gw:key:h:<hash>  -> the key's record as JSON (includes its id)
  gw:key:id:<id>   -> <hash>   (for admin lookups by id)
  gw:keys          -> set of ids (for listing)

`CachedKeyLookup` (gateway/access/key_lookup.py) sits in front of the store on the request path.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

import orjson

from gateway.access.principal import SCOPES
from gateway.errors import ClientError, InvalidRequest
from gateway.settings import Settings
from gateway.state.redis import RedisState, text

log = logging.getLogger("gateway.keys")
KEY_PREFIX = "sk-"
# Used when GATEWAY_KEY_PEPPER is unset (development only: production refuses to start without one).
DEV_PEPPER = "development-pepper-not-for-production"


# Caps on what a key's record holds (the admin API's models say them in the schema; the CLI's keys pass the
# same checks): every number stays well inside 64 bits and inside the integers a JSON double holds exactly.
MAX_RPM = 1_000_000  # requests per minute
MAX_TPM = 1_000_000_000  # tokens per minute
MAX_MONTHLY_TOKENS = 10**13  # tokens per calendar month
MAX_EXPIRES_AT = 4_102_444_800.0  # 2100-01-01T00:00:00Z, in Unix seconds
LIMIT_CAPS = {"rpm": MAX_RPM, "tpm": MAX_TPM, "monthly_token_budget": MAX_MONTHLY_TOKENS}


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

    def is_active(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return not self.revoked and (self.expires_at is None or now < self.expires_at)

    def to_json(self) -> bytes:
        data = asdict(self)
        data["scopes"] = sorted(self.scopes)
        return orjson.dumps(data)

    @classmethod
    def from_json(cls, raw: bytes | str) -> ApiKey:
        data = orjson.loads(raw)
        data["scopes"] = frozenset(data["scopes"])
        data["models"] = tuple(data["models"]) if data.get("models") is not None else None
        return cls(**data)

    def public_view(self) -> dict[str, Any]:
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
        check_limits(rpm=self.rpm, tpm=self.tpm, monthly_token_budget=self.monthly_token_budget)
        check_expiry(self.expires_at)
        check_capture_percent(self.capture_percent)


def check_limits(**limits: object) -> None:
    """Each of rpm, tpm, monthly_token_budget: unset, or a whole number from 1 to its cap."""
    for label, value in limits.items():
        cap = LIMIT_CAPS[label]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= cap):
            raise KeyInputError(f"{label} must be an integer from 1 to {cap} (or unset for no limit)", param=label)


def check_expiry(value: object) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_EXPIRES_AT
    ):
        raise KeyInputError(
            f"expires_at must be a Unix time after 0 and at most {MAX_EXPIRES_AT:.0f} (or unset)", param="expires_at"
        )


def check_capture_percent(value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100):
        raise KeyInputError("capture_percent must be a number from 0 to 100 (or unset: the gateway's settings decide)")


def pepper_of(settings: Settings) -> str:
    """The pepper API-key hashes are made with (a development one, with a warning, when none is set)."""
    if settings.key_pepper:
        return settings.key_pepper.get_secret_value()
    log.warning("GATEWAY_KEY_PEPPER is not set: API-key hashes use a development pepper")
    return DEV_PEPPER


def generate_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str, pepper: str) -> str:
    return hmac.digest(pepper.encode(), secret.encode(), "sha256").hex()


def new_record(spec: KeySpec, secret_hash: str) -> ApiKey:
    return ApiKey(
        id="key_" + secrets.token_hex(8),
        name=spec.name,
        owner=spec.owner,
        created_at=time.time(),
        secret_hash=secret_hash,
        scopes=frozenset(spec.scopes),
        models=spec.models,
        expires_at=spec.expires_at,
        rpm=spec.rpm,
        tpm=spec.tpm,
        monthly_token_budget=spec.monthly_token_budget,
        capture_percent=spec.capture_percent,
    )


LIMIT_FIELDS = (
    "rpm",
    "tpm",
    "monthly_token_budget",
    "models",
    "scopes",
    "expires_at",
    "name",
    "owner",
    "capture_percent",
)


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
        return await self.find_by_hash(text(secret_hash)) if secret_hash else None

    async def list(self) -> list[ApiKey]:
        """Every key in three round trips (the ids, their hashes, the records), however many there are."""
        ids = sorted(text(i) for i in await self.redis.run("key_list", lambda r: r.smembers("gw:keys")))
        if not ids:
            return []
        hashes = await self.redis.run("key_list", lambda r: r.mget([f"gw:key:id:{i}" for i in ids]))
        found = [text(h) for h in hashes if h]
        raws = await self.redis.run("key_list", lambda r: r.mget([f"gw:key:h:{h}" for h in found])) if found else []
        records = [ApiKey.from_json(raw) for raw in raws if raw]
        return sorted(records, key=lambda r: r.created_at)

    async def save(self, record: ApiKey) -> None:
        async def write(r: Any) -> None:
            async with r.pipeline(transaction=True) as pipe:
                pipe.set(f"gw:key:h:{record.secret_hash}", record.to_json())
                pipe.set(f"gw:key:id:{record.id}", record.secret_hash)
                pipe.sadd("gw:keys", record.id)
                await pipe.execute()

        await self.redis.run("key_write", write)


async def update_key(store: KeyStore, key_id: str, **changes: Any) -> ApiKey:
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
    check_limits(**{k: v for k, v in changes.items() if k in LIMIT_CAPS})
    check_expiry(changes.get("expires_at"))
    check_capture_percent(changes.get("capture_percent"))
    updated = replace(record, **changes)
    await store.save(updated)
    return updated
