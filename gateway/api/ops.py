"""GET /healthz (the process is alive) and GET /readyz (it can serve: a backend replica answers)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.deps import pool
from gateway.api.responses import json_response

router = APIRouter(tags=["ops"])


@router.get("/healthz", summary="Liveness")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get("/readyz", summary="Readiness: at least one backend replica reachable")
async def readyz(request: Request) -> Response:
    replicas = pool(request).replicas
    backends = {
        r.name: {"up": r.up, "circuit": r.breaker.state.name.lower(), "models": sorted(r.models)} for r in replicas
    }
    backend_ok = any(r.up for r in replicas)
    redis = request.app.state.redis
    redis_ok = await redis.ping()
    status = "unready" if not backend_ok else "ready" if redis_ok else "degraded"
    body = {
        "status": status,
        "backends": backends,
        "redis": {"configured": redis.configured, "up": redis_ok, "last_error": None if redis_ok else redis.last_error},
    }
    return json_response(body, status_code=200 if status == "ready" else 503)
