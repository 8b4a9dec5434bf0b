"""Exchanging an API key for a short-lived JWT (POST /auth/token): rate limited per client address,
minted only for stored keys that are active, with the key's scopes and models."""

from __future__ import annotations

from typing import Any

from gateway.access.authenticate import Authenticator
from gateway.access.jwt import JwtConfig, mint_token
from gateway.access.keys import KEY_PREFIX
from gateway.access.limits import AnonymousLimiter
from gateway.errors import GatewayError, InvalidRequest


class TokenExchangeDisabled(GatewayError):
    status = 501
    type = "invalid_request_error"
    code = "token_exchange_disabled"


class TokenIssuer:
    def __init__(self, *, config: JwtConfig | None, authenticator: Authenticator, limiter: AnonymousLimiter) -> None:
        self.config = config
        self.authenticator = authenticator
        self.limiter = limiter

    async def admit(self, client: str) -> JwtConfig:
        """The per-address limit (429), and the configuration tokens are minted with (501 without one)."""
        await self.limiter.check(client)
        if self.config is None or not self.config.can_mint:
            raise TokenExchangeDisabled("token exchange needs GATEWAY_JWT_SECRET (HS256)")
        return self.config

    async def issue(self, config: JwtConfig, secret: str | None, *, client: str) -> dict[str, Any]:
        """An OAuth2 client-credentials answer for the stored API key `secret` (401 when it is not one)."""
        if not secret or not secret.startswith(KEY_PREFIX):
            raise InvalidRequest(
                "send a stored API key (sk-...) as Bearer, X-API-Key or client_secret", code="invalid_client"
            )
        principal = await self.authenticator.principal(secret, client=client)  # 401: unknown, revoked, expired
        if principal.key_id is None or principal.key_id == "admin":
            raise InvalidRequest("only stored API keys can be exchanged for tokens", code="invalid_client")
        token, ttl = mint_token(
            config,
            subject=principal.subject,
            key_id=principal.subject,
            scopes=principal.scopes,
            models=tuple(sorted(principal.models)) if principal.models is not None else None,
        )
        return {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": ttl,
            "scope": " ".join(sorted(principal.scopes)),
        }
