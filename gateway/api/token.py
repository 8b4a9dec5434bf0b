"""POST /auth/token: exchange an API key for a short-lived JWT (OAuth2 client-credentials style).

The key comes as `Authorization: Bearer sk-...`, `X-API-Key`, or the form/JSON field
`client_secret` (with `grant_type=client_credentials`). Rate limited per client address.
"""

from __future__ import annotations

from urllib.parse import parse_qs

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.access.authenticate import presented_credential
from gateway.api.deps import tokens
from gateway.api.responses import json_response
from gateway.errors import InvalidRequest
from gateway.protocol.headers import RequestHeaders

router = APIRouter(tags=["auth"])


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
    secrets = fields.get("client_secret")
    return secrets[0] if secrets else None


@router.post("/auth/token", summary="Exchange an API key for a short-lived JWT")
async def issue_token(request: Request) -> Response:
    headers = RequestHeaders.of(request.scope)
    issuer = tokens(request)
    config = await issuer.admit(headers.client)
    secret = presented_credential(headers.authorization, headers.api_key) or await _body_secret(request)
    answer = await issuer.issue(config, secret, client=headers.client)
    return json_response(answer, headers={"Cache-Control": "no-store"})
