"""/admin/adapters: list, show, register (PUT, idempotent), remove LoRA adapters (admin scope only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from gateway.adapters.registry import AdapterRegistry, AdapterSpec
from gateway.auth import Principal, require_admin
from gateway.serving import json_response

router = APIRouter(prefix="/admin/adapters", tags=["admin"])
AdminDep = Annotated[Principal, Depends(require_admin)]


def registry(request: Request) -> AdapterRegistry:
    return request.app.state.adapters


async def _refresh_models(request: Request) -> None:
    """A registered adapter routes at once: the replicas' model lists are asked again now."""
    pool = getattr(request.app.state, "pool", None)
    if pool is not None:
        await pool.refresh()


@router.get("", summary="List registered adapters")
async def list_adapters(request: Request, _: AdminDep) -> Response:
    return json_response({"object": "list", "data": [a.public_view() for a in await registry(request).list()]})


@router.get("/{name:path}", summary="Show one adapter")
async def show_adapter(request: Request, name: str, _: AdminDep) -> Response:
    return json_response((await registry(request).get(name)).public_view())


@router.put("/{name:path}", summary="Register an adapter, or replace its record (a new version)")
async def put_adapter(request: Request, name: str, body: AdapterSpec, _: AdminDep) -> Response:
    adapter = await registry(request).register(name, body)
    await _refresh_models(request)
    return json_response(adapter.public_view())


@router.delete("/{name:path}", summary="Remove an adapter (replicas unload it once its requests are done)")
async def delete_adapter(request: Request, name: str, _: AdminDep) -> Response:
    adapter = await registry(request).remove(name)
    await _refresh_models(request)
    return json_response({**adapter.public_view(), "deleted": True})
