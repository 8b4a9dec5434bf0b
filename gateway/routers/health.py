"""GET /healthz (the process is alive) and GET /readyz (it can serve: a backend replica answers)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.deps import pool
from gateway.serving import json_response

router = APIRouter(tags=["ops"])


@router.get("/healthz", summary="Liveness")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get("/readyz", summary="Readiness: at least one backend replica reachable")
async def readyz(request: Request) -> Response:
    replicas = pool(request).replicas
    backends = {r.name: {"up": r.up, "circuit": r.breaker.state.name.lower(), "models": sorted(r.models)}
                for r in replicas}
    ready = any(r.up for r in replicas)
    body = {"status": "ready" if ready else "unready", "backends": backends}
    return json_response(body, status_code=200 if ready else 503)
