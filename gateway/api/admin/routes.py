"""/admin/routes: model routes (variants, weights, fallbacks, shadow, guard), promote, rollback,
history and per-variant stats (admin scope only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from gateway.access.principal import Principal
from gateway.api.deps import AdminDep, adapters, metrics, pool, route_stats, route_store, route_table
from gateway.api.responses import json_response
from gateway.errors import ModelNotFound
from gateway.model_routes import changes
from gateway.model_routes.spec import RouteSpec, StoredRoute
from gateway.model_routes.stats import VariantStats

router = APIRouter(prefix="/admin/routes", tags=["admin"])
RouteName = Annotated[str, Path(pattern=r"^[A-Za-z0-9._:-]{1,100}$", description="The public model name.")]


class PromoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="The variant (its served model) to send 100 % to.")


def _who(principal: Principal) -> str:
    return principal.key_id or principal.subject


async def _check_models(request: Request, name: str, spec: RouteSpec) -> None:
    """Every model the route names must be served (fallbacks may name other routes): 404 otherwise. A
    variant's adapter must be registered on that variant's base model: 400 otherwise."""
    table = route_table(request)
    for variant in spec.variants:
        if variant.adapter is not None:
            await adapters(request).check_base(variant.adapter, variant.model)
    wanted = [v.served for v in spec.variants] + [f for f in spec.fallbacks if table.get(f) is None]
    if spec.shadow is not None:
        wanted.append(spec.shadow.model)
    for model in wanted:
        try:
            await pool(request).resolve(model)
        except ModelNotFound:
            raise ModelNotFound(
                f"route '{name}' names model '{model}', which no backend serves", param="variants"
            ) from None


async def _changed(request: Request, route: StoredRoute | None) -> Response:
    await route_table(request).reload()  # this replica at once; the others within a poll
    return json_response(route.public() if route else {"deleted": True})


@router.get("", summary="List routes")
async def list_routes(request: Request, _: AdminDep) -> Response:
    routes = await route_store(request).all()
    return json_response({"routes": [r.public() for r in sorted(routes.values(), key=lambda r: r.name)]})


@router.get("/{name}", summary="Show a route")
async def show_route(request: Request, name: RouteName, _: AdminDep) -> Response:
    return json_response((await route_store(request).get(name)).public())


@router.put("/{name}", summary="Create or replace a route")
async def put_route(request: Request, name: RouteName, spec: RouteSpec, principal: AdminDep) -> Response:
    await _check_models(request, name, spec)
    return await _changed(request, await changes.put(route_store(request), name, spec, who=_who(principal)))


@router.delete("/{name}", summary="Delete a route (its name is then served as a plain model name again)")
async def delete_route(request: Request, name: RouteName, principal: AdminDep) -> Response:
    store = route_store(request)
    current = await store.get(name)
    return await _changed(request, await store.change(name, None, expected=current, who=_who(principal), why="manual"))


@router.post("/{name}/promote", summary="Send 100 % to one variant")
async def promote(request: Request, name: RouteName, body: PromoteBody, principal: AdminDep) -> Response:
    return await _changed(request, await changes.promote(route_store(request), name, body.model, who=_who(principal)))


@router.post("/{name}/rollback", summary="Restore the route as it was before its last change")
async def rollback(request: Request, name: RouteName, principal: AdminDep) -> Response:
    route = await changes.roll_back(route_store(request), name, who=_who(principal))
    metrics(request).rollbacks.labels(name, "manual").inc()
    return await _changed(request, route)


@router.get("/{name}/history", summary="Every change to the route, newest first")
async def history(request: Request, name: RouteName, _: AdminDep) -> Response:
    await route_store(request).get(name)  # 404 for an unknown route
    return json_response({"history": await route_store(request).history(name)})


@router.get("/{name}/stats", summary="Per-variant signals since the route's last change")
async def stats(request: Request, name: RouteName, _: AdminDep) -> Response:
    route = await route_store(request).get(name)
    seen = await route_stats(request).read(name, route.version)
    return json_response(
        {
            "route": name,
            "version": route.version,
            "since": route.updated_at,
            "variants": {v.served: seen.get(v.served, VariantStats()).public() for v in route.spec.variants},
        }
    )
