"""Dependency aliases for route handlers, and one-line accessors for objects built at start-up."""

from __future__ import annotations

from typing import Annotated, TypeVar

import orjson
from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError

from gateway.auth import Principal, authenticate
from gateway.backends.pool import BackendPool
from gateway.errors import InvalidRequest
from gateway.serving import InferenceService

M = TypeVar("M", bound=BaseModel)

PrincipalDep = Annotated[Principal, Depends(authenticate)]


def service(request: Request) -> InferenceService:
    return request.app.state.service


def pool(request: Request) -> BackendPool:
    return request.app.state.pool


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
