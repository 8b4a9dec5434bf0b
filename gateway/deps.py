"""Dependency aliases for route handlers, and one-line accessors for objects built at start-up."""

from __future__ import annotations

from typing import Annotated, TypeVar

import orjson
from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError

from gateway.access_log import current_record
from gateway.auth import Principal, authenticate
from gateway.backends.pool import BackendPool
from gateway.errors import InvalidRequest
from gateway.policy import Policy
from gateway.routes.targeting import Targeting
from gateway.serving import InferenceService
from gateway.tracing import stage_span

M = TypeVar("M", bound=BaseModel)


async def authenticated(request: Request) -> Principal:
    """`authenticate` in its own span, with the key id noted for the access log."""
    with stage_span(request.app.state.tracing.tracer, "auth"):
        principal = await authenticate(request)
    current_record().key_id = principal.key_id
    return principal


PrincipalDep = Annotated[Principal, Depends(authenticated)]


def service(request: Request) -> InferenceService:
    return request.app.state.service


def policy(request: Request) -> Policy:
    return request.app.state.policy


def pool(request: Request) -> BackendPool:
    return request.app.state.pool


def targeting(request: Request) -> Targeting:
    return request.app.state.targeting


def _field_path(loc: tuple[object, ...]) -> str:
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and p.startswith("function-")))


async def parse_body(request: Request, model: type[M]) -> M:
    """Raw body -> model, with OpenAI-style 400s that name the offending field."""
    raw = await request.body()
    if not raw:
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = _field_path(first["loc"]) or None
        raise InvalidRequest(f"{field or 'body'}: {first['msg']}", param=field) from None
