"""/admin/adapters: list, show, register (PUT, idempotent), remove LoRA adapters (admin scope only)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.adapters.registry import AdapterSpec
from gateway.api.deps import AdminDep, pool
from gateway.api.deps import adapters as registry
from gateway.api.responses import json_response

router = APIRouter(prefix="/admin/adapters", tags=["admin"])


async def _refresh_models(request: Request) -> None:
    """A registered adapter routes at once: the replicas' model lists are asked again now."""
    await pool(request).refresh()


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
