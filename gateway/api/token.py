"""POST /auth/token: exchange an API key for a short-lived JWT (OAuth2 client-credentials style).

The key comes as `Authorization: Bearer sk-...`, `X-API-Key`, or the form/JSON field
`client_secret` (with `grant_type=client_credentials`). Rate limited per client address.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import parse_qs

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from gateway.access.authenticate import presented_credential
from gateway.api.contract import errors, ok, schema_ref
from gateway.api.deps import tokens
from gateway.api.responses import json_response
from gateway.errors import InvalidRequest
from gateway.protocol.headers import RequestHeaders

router = APIRouter(tags=["auth"])


class TokenRequest(BaseModel):
    """The form (or JSON) body; the key may come in a header instead, and then the body may be empty."""

    model_config = ConfigDict(extra="ignore")  # an OAuth client may send fields this grant does not use

    grant_type: Literal["client_credentials"] = "client_credentials"
    client_secret: str | None = Field(None, min_length=1, max_length=512, description="The API key (sk-...).")
    client_id: str | None = Field(None, max_length=256, description="Ignored: the key says who the client is.")
    scope: str | None = Field(None, max_length=256, description="Ignored: the token carries the key's scopes.")


class TokenAnswer(BaseModel):
    access_token: str
    token_type: Literal["Bearer"]
    expires_in: int
    scope: str


async def _body_secret(request: Request) -> str | None:
    raw = await request.body()
    if not raw:
        return None
    fields: Any
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            fields = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise InvalidRequest("request body is not valid JSON") from None
        if not isinstance(fields, dict):
            raise InvalidRequest("request body must be a JSON object")
    else:
        fields = {k: v[0] for k, v in parse_qs(raw.decode(errors="replace")).items()}
    grant = fields.get("grant_type", "client_credentials")
    if grant != "client_credentials":
        raise InvalidRequest(
            f"unsupported grant_type {grant!r}; use client_credentials",
            param="grant_type",
            code="unsupported_grant_type",
        )
    try:
        body = TokenRequest.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        raise InvalidRequest(f"{field or 'body'}: {first['msg']}", param=field) from None
    return body.client_secret


BODY = {"schema": schema_ref(TokenRequest)}


@router.post(
    "/auth/token",
    summary="Exchange an API key for a short-lived JWT",
    responses=ok({"model": TokenAnswer}) | errors(400, 401, 413, 429, 501, 503),
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {"application/x-www-form-urlencoded": BODY, "application/json": BODY},
        },
        "security": [{"bearer": []}, {"api_key": []}, {}],
    },
)
async def issue_token(request: Request) -> Response:
    headers = RequestHeaders.of(request.scope)
    issuer = tokens(request)
    config = await issuer.admit(headers.client)
    secret = presented_credential(headers.authorization, headers.api_key) or await _body_secret(request)
    answer = await issuer.issue(config, secret, client=headers.client)
    return json_response(answer, headers={"Cache-Control": "no-store"})
