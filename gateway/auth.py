"""Who is calling: `Authorization: Bearer <API key | JWT>` or `X-API-Key: <API key>` -> a `Principal`.

Credentials, in order: the bootstrap admin key (constant-time comparison), an `sk-...` API key
(peppered-hash lookup through a short in-process cache), otherwise a JWT (pinned algorithms).
Every failure is a 401 with `WWW-Authenticate`; a valid identity lacking a scope or a model is a
403. With no admin key configured (development only; production refuses to start without one)
calls are anonymous.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass, field

from fastapi import Request

from gateway.errors import Forbidden, GatewayError, Unauthorized
from gateway.jwt_tokens import JwtVerifier, TokenInvalid
from gateway.keys import KEY_PREFIX, ApiKey, CachedKeyLookup
from gateway.redis_state import RedisUnavailable

log = logging.getLogger("gateway.auth")

ALL_SCOPES = frozenset({"inference", "admin"})
MAX_CREDENTIAL_BYTES = 8192


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    key_id: str | None = None
    scopes: frozenset[str] = field(default_factory=lambda: frozenset({"inference"}))
    models: frozenset[str] | None = None  # None: every model
    rpm: int | None = None
    tpm: int | None = None
    monthly_token_budget: int | None = None
    capture_percent: float | None = None  # the key's own capture share (gateway/store/capture.py)

    def require_scope(self, scope: str) -> None:
        if scope not in self.scopes:
            raise Forbidden(f"this key lacks the '{scope}' scope")

    def require_model(self, model: str) -> None:
        if self.models is not None and model not in self.models:
            raise Forbidden(f"this key may not use model '{model}'", param="model")


ANONYMOUS = Principal(subject="anonymous", scopes=ALL_SCOPES)
BOOTSTRAP_ADMIN = Principal(subject="admin", key_id="admin", scopes=ALL_SCOPES)


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


def raw_header(request: Request, name: bytes) -> str | None:
    """The first value of header `name` (lower-case bytes), read from the ASGI scope: the same answer
    as `request.headers.get`, without building Starlette's Headers object on the inference path."""
    for key, value in request.scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def presented_credential(request: Request) -> str | None:
    header = raw_header(request, b"authorization")
    if header:
        if len(header) > MAX_CREDENTIAL_BYTES:
            raise _refused("Authorization header too large", token=True)
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise _refused("Authorization header must be 'Bearer <API key or token>'")
        return value.strip()
    key = raw_header(request, b"x-api-key")
    if key is not None and len(key) > MAX_CREDENTIAL_BYTES:
        raise _refused("X-API-Key header too large")
    return key


def principal_for_key(record: ApiKey) -> Principal:
    return Principal(subject=record.id, key_id=record.id, scopes=record.scopes,
                     models=frozenset(record.models) if record.models is not None else None,
                     rpm=record.rpm, tpm=record.tpm, monthly_token_budget=record.monthly_token_budget,
                     capture_percent=record.capture_percent)


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
    """Built once at start-up; `authenticate` is the request dependency that uses it."""

    keys: CachedKeyLookup
    jwt: JwtVerifier | None
    admin_key: str | None
    default_rpm: int | None = None
    default_tpm: int | None = None
    # key id -> (the record it was made from, its Principal): a key's Principal is built once per
    # record version, not on every request (a changed key is a new record object).
    _principals: dict[str, tuple[ApiKey, Principal]] = field(default_factory=dict, repr=False)

    async def principal(self, credential: str | None) -> Principal:
        if self.admin_key is None:
            return ANONYMOUS
        if not credential:
            raise _refused("Missing API key: send 'Authorization: Bearer sk-...' or 'X-API-Key: sk-...'")
        if hmac.compare_digest(credential.encode(), self.admin_key.encode()):
            return BOOTSTRAP_ADMIN
        if credential.startswith(KEY_PREFIX):
            return self._principal_of(_check_active(await self._lookup(self.keys.find, credential)))
        return await self._from_token(credential)

    def _principal_of(self, record: ApiKey) -> Principal:
        cached = self._principals.get(record.id)
        if cached is not None and cached[0] is record:
            return cached[1]
        principal = principal_for_key(record)
        if len(self._principals) >= self.keys.max_entries:
            self._principals.clear()
        self._principals[record.id] = (record, principal)
        return principal

    async def _lookup(self, find, value: str) -> ApiKey | None:  # noqa: ANN001
        try:
            return await find(value)
        except RedisUnavailable:
            raise AuthUnavailable("the key store is unavailable; retry shortly",
                                  headers={"Retry-After": "5"}) from None

    async def _from_token(self, token: str) -> Principal:
        if self.jwt is None:
            raise _refused("Invalid API key")
        try:
            claims = await self.jwt.verify(token)
        except TokenInvalid as exc:
            raise _refused(str(exc), token=True) from None
        scope = claims.get("scope", claims.get("scp", ""))
        scopes = frozenset(scope.split() if isinstance(scope, str) else scope) & ALL_SCOPES
        models = claims.get("models")
        models = frozenset(models) if isinstance(models, list) else None
        key_id = claims.get("key_id")
        if isinstance(key_id, str):
            # Issued by us for an API key: the key must still be active, and its limits apply.
            record = _check_active(await self._lookup(self.keys.find_id, key_id))
            base = principal_for_key(record)
            allowed = base.models if models is None else (models if base.models is None else models & base.models)
            return Principal(subject=record.id, key_id=record.id, scopes=scopes & base.scopes, models=allowed,
                             rpm=base.rpm, tpm=base.tpm, monthly_token_budget=base.monthly_token_budget,
                             capture_percent=base.capture_percent)
        return Principal(subject=f"jwt:{claims['sub']}", scopes=scopes, models=models,
                         rpm=self.default_rpm, tpm=self.default_tpm)


async def authenticate(request: Request) -> Principal:
    authenticator: Authenticator | None = getattr(request.app.state, "authenticator", None)
    if authenticator is None:  # the app was built without the policy layer
        raise AuthUnavailable("authentication is not configured")
    principal = await authenticator.principal(presented_credential(request))
    request.state.principal = principal
    return principal


async def require_admin(request: Request) -> Principal:
    principal = await authenticate(request)
    principal.require_scope("admin")
    return principal
