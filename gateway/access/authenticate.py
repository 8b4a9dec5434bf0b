"""Who is calling: `Authorization: Bearer <API key | JWT>` or `X-API-Key: <API key>` -> a `Principal`.

Credentials, in order: the bootstrap admin key (constant-time comparison), an `sk-...` API key
(peppered-hash lookup through a short in-process cache), otherwise a JWT (pinned algorithms).
Every failure is a 401 with `WWW-Authenticate`; a valid identity lacking a scope or a model is a
403 (raised by `Principal`). There is no anonymous access: with GATEWAY_AUTH=none (accepted only on
a loopback address) callers from a loopback address are the local operator, and everyone else is
refused.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from opentelemetry.trace import Tracer

from gateway.access.jwt import JwtVerifier, TokenInvalid
from gateway.access.key_lookup import CachedKeyLookup
from gateway.access.keys import KEY_PREFIX, ApiKey
from gateway.access.principal import BOOTSTRAP_ADMIN, LOCAL_OPERATOR, SCOPES, Principal
from gateway.errors import Forbidden, GatewayError, Unauthorized
from gateway.observability.tracing import DISABLED, stage_span
from gateway.protocol.headers import RequestHeaders
from gateway.settings import is_loopback
from gateway.state.redis import RedisUnavailable

MAX_CREDENTIAL_BYTES = 8192


class AuthUnavailable(GatewayError):
    """The key store cannot be reached and this key was not seen recently: try again shortly."""

    status = 503
    type = "service_unavailable"
    code = "auth_store_unavailable"


def _refused(message: str, *, token: bool = False) -> Unauthorized:
    challenge = 'Bearer realm="gateway"'
    if token:
        escaped = message.replace('"', "'")
        challenge += f', error="invalid_token", error_description="{escaped}"'
    return Unauthorized(message, headers={"WWW-Authenticate": challenge})


def presented_credential(authorization: str | None, api_key: str | None) -> str | None:
    """The credential of `Authorization: Bearer ...`, else of `X-API-Key`; 401 for a malformed header."""
    if authorization:
        if len(authorization) > MAX_CREDENTIAL_BYTES:
            raise _refused("Authorization header too large", token=True)
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise _refused("Authorization header must be 'Bearer <API key or token>'")
        return value.strip()
    if api_key is not None and len(api_key) > MAX_CREDENTIAL_BYTES:
        raise _refused("X-API-Key header too large")
    return api_key


def credential_digest(credential: str) -> str:
    return hashlib.sha256(credential.encode()).hexdigest()


def principal_for_key(record: ApiKey) -> Principal:
    return Principal(
        subject=record.id,
        key_id=record.id,
        scopes=record.scopes,
        models=frozenset(record.models) if record.models is not None else None,
        rpm=record.rpm,
        tpm=record.tpm,
        monthly_token_budget=record.monthly_token_budget,
        capture_percent=record.capture_percent,
        owner=record.owner,
    )


def _check_active(record: ApiKey | None) -> ApiKey:
    if record is None:
        raise _refused("Invalid API key")
    if record.revoked:
        raise _refused("API key revoked")
    if not record.is_active():
        raise _refused("API key expired")
    return record


@dataclass
class Authenticator:
    """Built once at start-up; `principal` runs on every request that needs an identity."""

    keys: CachedKeyLookup
    jwt: JwtVerifier | None
    admin_key: str | None
    open_locally: bool = False  # GATEWAY_AUTH=none
    default_rpm: int | None = None
    default_tpm: int | None = None
    tracer: Tracer = DISABLED.tracer
    # key id -> (the record it was made from, its Principal): a key's Principal is built once per
    # record version, not on every request (a changed key is a new record object).
    _principals: dict[str, tuple[ApiKey, Principal]] = field(default_factory=dict, repr=False)

    async def authenticate(self, headers: RequestHeaders, *, scope: str | None = None) -> Principal:
        """The caller of a request, in its own span; `scope`: one it must have (403 without)."""
        with stage_span(self.tracer, "auth"):
            principal = await self.principal(
                presented_credential(headers.authorization, headers.api_key), client=headers.client
            )
        if scope is not None:
            principal.require_scope(scope)
        return principal

    async def principal(self, credential: str | None, *, client: str) -> Principal:
        """The caller of a request from address `client` presenting `credential`."""
        if self.open_locally:
            if not is_loopback(client):
                raise Forbidden("this gateway is open to loopback callers only (GATEWAY_AUTH=none)")
            return LOCAL_OPERATOR
        if not credential:
            raise _refused("Missing API key: send 'Authorization: Bearer sk-...' or 'X-API-Key: sk-...'")
        if self.admin_key is not None and hmac.compare_digest(credential.encode(), self.admin_key.encode()):
            return BOOTSTRAP_ADMIN
        if credential.startswith(KEY_PREFIX):
            return self._principal_of(_check_active(await self._lookup(self.keys.find, credential)))
        return await self._from_token(credential)

    async def holder(self, key_id: str | None, *, admin_digest: str | None, client: str) -> Principal:
        """The principal of a console session opened with key `key_id` (None: the local operator); 401 once
        that key is revoked or expired, or the bootstrap admin key it was opened with has changed."""
        if self.open_locally or key_id is None:
            return await self.principal(None, client=client)
        if admin_digest is not None:
            if self.admin_key is not None and hmac.compare_digest(admin_digest, credential_digest(self.admin_key)):
                return BOOTSTRAP_ADMIN
            raise _refused("the admin key has changed; sign in again")
        return self._principal_of(_check_active(await self._lookup(self.keys.find_id, key_id)))

    def _principal_of(self, record: ApiKey) -> Principal:
        cached = self._principals.get(record.id)
        if cached is not None and cached[0] is record:
            return cached[1]
        principal = principal_for_key(record)
        if len(self._principals) >= self.keys.max_entries:
            self._principals.clear()
        self._principals[record.id] = (record, principal)
        return principal

    async def _lookup(self, find: Callable[[str], Awaitable[ApiKey | None]], value: str) -> ApiKey | None:
        try:
            return await find(value)
        except RedisUnavailable:
            raise AuthUnavailable("the key store is unavailable; retry shortly", headers={"Retry-After": "5"}) from None

    async def _from_token(self, token: str) -> Principal:
        if self.jwt is None:
            raise _refused("Invalid API key")
        try:
            claims = await self.jwt.verify(token)
        except TokenInvalid as exc:
            raise _refused(str(exc), token=True) from None
        scope = claims.get("scope", claims.get("scp", ""))
        scopes = frozenset(scope.split() if isinstance(scope, str) else scope) & SCOPES
        models = claims.get("models")
        models = frozenset(models) if isinstance(models, list) else None
        key_id = claims.get("key_id")
        if isinstance(key_id, str):
            # Issued by us for an API key: the key must still be active, and its limits apply.
            record = _check_active(await self._lookup(self.keys.find_id, key_id))
            base = principal_for_key(record)
            allowed = base.models if models is None else (models if base.models is None else models & base.models)
            return Principal(
                subject=record.id,
                key_id=record.id,
                scopes=scopes & base.scopes,
                models=allowed,
                rpm=base.rpm,
                tpm=base.tpm,
                monthly_token_budget=base.monthly_token_budget,
                capture_percent=base.capture_percent,
                owner=base.owner,
            )
        return Principal(
            subject=f"jwt:{claims['sub']}", scopes=scopes, models=models, rpm=self.default_rpm, tpm=self.default_tpm
        )
