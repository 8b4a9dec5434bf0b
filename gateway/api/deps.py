"""Dependency aliases for route handlers, and one-line accessors for the objects built at start-up
(gateway/app.py puts them on `app.state`)."""

from __future__ import annotations

from typing import Annotated, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel

from gateway.access.authenticate import Authenticator
from gateway.access.cost import PriceTable
from gateway.access.key_lookup import CachedKeyLookup
from gateway.access.keys import KeyStore
from gateway.access.limits import KeyRateLimiter
from gateway.access.principal import Principal
from gateway.access.tokens import TokenIssuer
from gateway.access.usage import UsageStore
from gateway.adapters.registry import AdapterRegistry
from gateway.model_routes.stats import RouteStats
from gateway.model_routes.store import RouteStore
from gateway.model_routes.table import RouteTable
from gateway.observability.access_log import current_record
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline.feedback import FeedbackDesk
from gateway.pipeline.inference import InferencePipeline
from gateway.pipeline.review import ReviewQueue
from gateway.protocol.headers import RequestHeaders
from gateway.protocol.requests import parse_request
from gateway.replicas.pool import BackendPool
from gateway.store.runtime import StoreRuntime

M = TypeVar("M", bound=BaseModel)


def authenticator(request: Request) -> Authenticator:
    return request.app.state.authenticator


async def authenticated(request: Request) -> Principal:
    """The caller, with the key id noted for the access log."""
    principal = await authenticator(request).authenticate(RequestHeaders.of(request.scope))
    current_record().key_id = principal.key_id
    return principal


async def administrator(request: Request) -> Principal:
    principal = await authenticator(request).authenticate(RequestHeaders.of(request.scope), scope="admin")
    current_record().key_id = principal.key_id
    return principal


async def reviewer(request: Request) -> Principal:
    """A caller who may read captured inferences: a `reviewer` key, or an `admin` one."""
    principal = await authenticator(request).authenticate(RequestHeaders.of(request.scope))
    current_record().key_id = principal.key_id
    if "admin" not in principal.scopes:
        principal.require_scope("reviewer")
    return principal


PrincipalDep = Annotated[Principal, Depends(authenticated)]
AdminDep = Annotated[Principal, Depends(administrator)]
ReviewerDep = Annotated[Principal, Depends(reviewer)]


async def parse_body(request: Request, model: type[M]) -> M:
    """Raw body -> model, with OpenAI-style 400s that name the offending field."""
    return parse_request(await request.body(), model)


# -- the objects built at start-up ------------------------------------------------------------------


def pipeline(request: Request) -> InferencePipeline:
    return request.app.state.pipeline


def pool(request: Request) -> BackendPool:
    return request.app.state.pool


def keys(request: Request) -> KeyStore:
    return request.app.state.keys


def key_lookup(request: Request) -> CachedKeyLookup:
    return request.app.state.key_lookup


def route_store(request: Request) -> RouteStore:
    return request.app.state.route_store


def route_table(request: Request) -> RouteTable:
    return request.app.state.route_table


def route_stats(request: Request) -> RouteStats:
    return request.app.state.route_stats


def adapters(request: Request) -> AdapterRegistry:
    return request.app.state.adapters


def store(request: Request) -> StoreRuntime:
    return request.app.state.store


def review(request: Request) -> ReviewQueue:
    return request.app.state.review


def limiter(request: Request) -> KeyRateLimiter:
    return request.app.state.limiter


def usage(request: Request) -> UsageStore:
    return request.app.state.usage


def prices(request: Request) -> PriceTable:
    return request.app.state.prices


def feedback_desk(request: Request) -> FeedbackDesk:
    return request.app.state.feedback


def metrics(request: Request) -> GatewayMetrics:
    return request.app.state.metrics


def tokens(request: Request) -> TokenIssuer:
    return request.app.state.tokens
