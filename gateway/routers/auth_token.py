"""POST /auth/token: exchange an API key for a short-lived JWT (OAuth2 client-credentials style).

The key comes as `Authorization: Bearer sk-...`, `X-API-Key`, or the form/JSON field
`client_secret` (with `grant_type=client_credentials`). Rate limited per client address.
"""

from __future__ import annotations

from urllib.parse import parse_qs

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.auth import presented_credential
from gateway.errors import GatewayError, InvalidRequest
from gateway.jwt_tokens import mint_token
from gateway.keys import KEY_PREFIX
from gateway.serving import json_response

router = APIRouter(tags=["auth"])


class TokenExchangeDisabled(GatewayError):
    status = 501
    type = "invalid_request_error"
    code = "token_exchange_disabled"


async def _body_secret(request: Request) -> str | None:
    raw = await request.body()
    if not raw:
        return None
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise InvalidRequest("request body is not valid JSON") from None
        fields = {k: [v] for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}
    else:
        fields = parse_qs(raw.decode(errors="replace"))
    grant = (fields.get("grant_type") or ["client_credentials"])[0]
    if grant != "client_credentials":
        raise InvalidRequest(f"unsupported grant_type {grant!r}; use client_credentials", code="unsupported_grant_type")
    return (fields.get("client_secret") or [None])[0]


@router.post("/auth/token", summary="Exchange an API key for a short-lived JWT")
async def issue_token(request: Request) -> Response:
    policy = request.app.state.policy
    await policy.anonymous.check(request.client.host if request.client else "unknown")
    config = policy.jwt_config
    if config is None or not config.can_mint:
        raise TokenExchangeDisabled("token exchange needs GATEWAY_JWT_SECRET (HS256)")
    secret = presented_credential(request) or await _body_secret(request)
    if not secret or not secret.startswith(KEY_PREFIX):
        raise InvalidRequest("send a stored API key (sk-...) as Bearer, X-API-Key or client_secret",
                             code="invalid_client")
    principal = await policy.authenticator.principal(secret)  # 401 for an unknown/revoked/expired key
    if principal.key_id is None or principal.key_id == "admin":
        raise InvalidRequest("only stored API keys can be exchanged for tokens", code="invalid_client")
    token, ttl = mint_token(config, subject=principal.subject, key_id=principal.subject, scopes=principal.scopes,
                            models=tuple(sorted(principal.models)) if principal.models is not None else None)
    return json_response({"access_token": token, "token_type": "Bearer", "expires_in": ttl,
                          "scope": " ".join(sorted(principal.scopes))}, headers={"Cache-Control": "no-store"})
