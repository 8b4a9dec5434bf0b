"""/admin/adapters: list, show, register (PUT, idempotent), remove LoRA adapters (admin scope only)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel
from starlette.responses import Response

from gateway.adapters.registry import NAME_PATTERN, Adapter, AdapterSpec
from gateway.api.contract import AUTHENTICATED, WITH_BODY, errors, link, ok
from gateway.api.deps import AdminDep, pool
from gateway.api.deps import adapters as registry
from gateway.api.responses import json_response

router = APIRouter(prefix="/admin/adapters", tags=["admin"], responses=errors(*AUTHENTICATED))
AdapterName = Annotated[str, Path(pattern=NAME_PATTERN, description="The adapter's public model name, e.g. orders:v2.")]


class AdapterView(Adapter):
    object: Literal["adapter"]


class DeletedAdapter(AdapterView):
    deleted: bool


class AdapterList(BaseModel):
    object: Literal["list"]
    data: list[dict[str, Any]]


ADAPTER_LINKS = {
    "ShowAdapter": link("show_adapter", "The adapter just registered.", name="$request.path.name"),
    "DeleteAdapter": link("delete_adapter", "Remove it.", name="$request.path.name"),
}


async def _refresh_models(request: Request) -> None:
    """A registered adapter routes at once: the replicas' model lists are asked again now."""
    await pool(request).refresh()


@router.get("", summary="List registered adapters", responses=ok({"model": AdapterList}))
async def list_adapters(request: Request, _: AdminDep) -> Response:
    return json_response({"object": "list", "data": [a.public_view() for a in await registry(request).list()]})


@router.get("/{name:path}", summary="Show one adapter", responses=ok({"model": AdapterView}) | errors(400, 404))
async def show_adapter(request: Request, name: AdapterName, _: AdminDep) -> Response:
    return json_response((await registry(request).get(name)).public_view())


@router.put(
    "/{name:path}",
    summary="Register an adapter, or replace its record (a new version)",
    responses=ok({"model": AdapterView, "description": "The adapter's record.", "links": ADAPTER_LINKS})
    | errors(*WITH_BODY),
)
async def put_adapter(request: Request, name: AdapterName, body: AdapterSpec, _: AdminDep) -> Response:
    adapter = await registry(request).register(name, body)
    await _refresh_models(request)
    return json_response(adapter.public_view())


@router.delete(
    "/{name:path}",
    summary="Remove an adapter (replicas unload it once its requests are done)",
    responses=ok({"model": DeletedAdapter}) | errors(400, 404),
)
async def delete_adapter(request: Request, name: AdapterName, _: AdminDep) -> Response:
    adapter = await registry(request).remove(name)
    await _refresh_models(request)
    return json_response({**adapter.public_view(), "deleted": True})
