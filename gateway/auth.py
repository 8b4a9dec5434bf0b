"""Who is calling: `Authorization: Bearer <key>` or `X-API-Key: <key>` -> a `Principal`.

The core accepts the bootstrap admin key (constant-time comparison). With no admin key configured
(development only; production refuses to start without one) calls are anonymous.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from fastapi import Request

from gateway.errors import Forbidden, Unauthorized

ALL_SCOPES = frozenset({"inference", "admin"})


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    key_id: str | None = None
    scopes: frozenset[str] = field(default_factory=lambda: frozenset({"inference"}))
    models: frozenset[str] | None = None  # None: every model
    rpm: int | None = None
    tpm: int | None = None

    def require_scope(self, scope: str) -> None:
        if scope not in self.scopes:
            raise Forbidden(f"this key lacks the '{scope}' scope")

    def require_model(self, model: str) -> None:
        if self.models is not None and model not in self.models:
            raise Forbidden(f"this key may not use model '{model}'", param="model")


ANONYMOUS = Principal(subject="anonymous", scopes=ALL_SCOPES)


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized("Authorization header must be 'Bearer <API key or token>'")
        return value.strip()
    return request.headers.get("x-api-key")


async def authenticate(request: Request) -> Principal:
    admin_key = request.app.state.settings.admin_key
    if admin_key is None:
        return ANONYMOUS
    key = presented_key(request)
    if not key:
        raise Unauthorized("Missing API key: send 'Authorization: Bearer sk-...' or 'X-API-Key: sk-...'")
    if hmac.compare_digest(key.encode(), admin_key.get_secret_value().encode()):
        return Principal(subject="admin", key_id="admin", scopes=ALL_SCOPES)
    raise Unauthorized("Invalid API key")
