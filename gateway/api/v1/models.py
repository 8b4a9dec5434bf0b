"""GET /v1/models: the union of what every replica serves, plus configured aliases and model routes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.contract import AUTHENTICATED, errors
from gateway.api.deps import PrincipalDep, pool, route_table
from gateway.api.responses import json_response

router = APIRouter(prefix="/v1", tags=["inference"])


@router.get("/models", summary="List models", responses=errors(*AUTHENTICATED))
async def list_models(request: Request, principal: PrincipalDep) -> Response:
    served = pool(request).models()
    entries = [
        {"id": name, "object": "model", "created": 0, "owned_by": ",".join(sorted(replicas))}
        for name, replicas in sorted(served.items())
    ]
    for alias, target in sorted(pool(request).aliases().items()):
        if target in served or f"{target}:latest" in served:
            entries.append({"id": alias, "object": "model", "created": 0, "owned_by": f"alias:{target}"})
    for name in sorted(route_table(request).routes):
        entries.append({"id": name, "object": "model", "created": 0, "owned_by": "route"})
    if principal.models is not None:
        entries = [e for e in entries if e["id"] in principal.models]
    return json_response({"object": "list", "data": entries})
