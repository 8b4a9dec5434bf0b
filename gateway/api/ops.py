"""Probes and the schema: GET /healthz (the process is alive), GET /readyz (it can serve), both saying no
more than that to anyone; GET /admin/health (what each part looks like, admin scope); GET /openapi.json
(the API's schema: admin scope unless GATEWAY_API_DOCS=public)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.responses import Response

from gateway.api.contract import AUTHENTICATED, errors, ok
from gateway.api.deps import AdminDep, pool
from gateway.api.responses import json_response

router = APIRouter(tags=["ops"])


class Readiness(BaseModel):
    status: Literal["ready", "degraded", "unready", "draining"]


schema_router = APIRouter()  # included when GATEWAY_API_DOCS=admin


async def _readiness(request: Request) -> tuple[str, dict[str, Any]]:
    """ready | degraded (Redis is away: the gateway serves from its fallbacks) | unready (no backend) |
    draining (SIGTERM arrived: gateway/api/drain.py), and the details behind it."""
    replicas = pool(request).replicas
    backends = {
        r.name: {"up": r.up, "circuit": r.breaker.state.name.lower(), "models": sorted(r.models)} for r in replicas
    }
    redis = request.app.state.redis
    redis_ok = await redis.ping()
    status = "unready" if not any(r.up for r in replicas) else "ready" if redis_ok else "degraded"
    if request.app.state.drain.draining:  # shutting down: out of the load balancer's endpoints first
        status = "draining"
    details = {
        "backends": backends,
        "redis": {"configured": redis.configured, "up": redis_ok, "last_error": None if redis_ok else redis.last_error},
    }
    return status, details


@router.get("/healthz", summary="Liveness", openapi_extra={"security": []})
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get(
    "/readyz",
    summary="Readiness: at least one backend replica reachable (details: /admin/health)",
    responses=ok({"model": Readiness}) | ok({"model": Readiness, "description": "Unready or draining."}, 503),
    openapi_extra={"security": []},
)
async def readyz(request: Request) -> Response:
    """503 while no replica answers or the process drains; 200 when `degraded` too: without Redis the gateway
    still serves, and a load balancer that took every degraded gateway out would turn that into an outage."""
    status, _ = await _readiness(request)
    return json_response({"status": status}, status_code=503 if status in ("unready", "draining") else 200)


@router.get(
    "/admin/health",
    summary="Readiness with its details: each replica, its circuit and models, Redis",
    responses=errors(*AUTHENTICATED),
)
async def admin_health(request: Request, _: AdminDep) -> Response:
    status, details = await _readiness(request)
    return json_response({"status": status, **details})


@schema_router.get("/openapi.json", include_in_schema=False)
async def openapi(request: Request, _: AdminDep) -> Response:
    """The schema, for admin-scoped callers."""
    return json_response(request.app.openapi())
