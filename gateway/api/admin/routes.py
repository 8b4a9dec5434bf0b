"""/admin/routes: model routes (variants, weights, fallbacks, shadow, guard), promote, rollback,
history and per-variant stats (admin scope only)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from gateway.access.principal import Principal
from gateway.api.contract import AUTHENTICATED, WITH_BODY, errors, link, ok
from gateway.api.deps import AdminDep, adapters, metrics, pool, route_stats, route_store, route_table
from gateway.api.responses import json_response
from gateway.errors import ModelNotFound
from gateway.model_routes import changes
from gateway.model_routes.spec import ModelName, RouteSpec, StoredRoute
from gateway.model_routes.stats import VariantStats
from gateway.protocol.identifiers import ROUTE_NAME_PATTERN

router = APIRouter(prefix="/admin/routes", tags=["admin"], responses=errors(*AUTHENTICATED))
RouteName = Annotated[str, Path(pattern=ROUTE_NAME_PATTERN, description="The public model name.")]


class PromoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: ModelName = Field(description="The variant (its served model) to send 100 % to.")


class RouteView(RouteSpec):
    """A route as stored: its spec, name, version (rises with every change) and last change (Unix time)."""

    name: str
    version: int
    updated_at: float


class RouteList(BaseModel):
    routes: list[RouteView]


class Deleted(BaseModel):
    deleted: bool


class RouteHistory(BaseModel):
    history: list[dict[str, Any]]


class RouteStats(BaseModel):
    route: str
    version: int
    since: float
    variants: dict[str, dict[str, Any]]


ROUTE_LINKS = {
    "ShowRoute": link("show_route", "The route just written.", name="$request.path.name"),
    "RouteHistory": link("route_history", "Its changes.", name="$request.path.name"),
    "RouteStats": link("route_stats", "Its per-variant signals.", name="$request.path.name"),
    "PromoteRoute": link("promote_route", "Send 100 % to one of its variants.", name="$request.path.name"),
    "RollBackRoute": link("roll_back_route", "Undo this change.", name="$request.path.name"),
    "DeleteRoute": link("delete_route", "Delete it.", name="$request.path.name"),
}
CHANGED = {"model": RouteView, "description": "The route as it is now."}


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


async def promote_by_admin(request: Request, name: str, model: str, principal: Principal) -> StoredRoute:
    """An admin's promote (this API's and the console's): `model` at 100 %, in this replica's table at once."""
    route = await changes.promote(route_store(request), name, model, who=_who(principal))
    await route_table(request).reload()
    return route


async def roll_back_by_admin(request: Request, name: str, principal: Principal) -> StoredRoute:
    """An admin's rollback (this API's and the console's): counted as a manual one, in this replica's table at
    once."""
    route = await changes.roll_back(route_store(request), name, who=_who(principal))
    metrics(request).rollbacks.labels(name, "manual").inc()
    await route_table(request).reload()
    return route


async def _changed(request: Request, route: StoredRoute | None) -> Response:
    await route_table(request).reload()  # this replica at once; the others within a poll
    return json_response(route.public() if route else {"deleted": True})


@router.get("", summary="List routes", responses=ok({"model": RouteList}))
async def list_routes(request: Request, _: AdminDep) -> Response:
    routes = await route_store(request).all()
    return json_response({"routes": [r.public() for r in sorted(routes.values(), key=lambda r: r.name)]})


@router.get("/{name}", summary="Show a route", responses=ok(CHANGED) | errors(404))
async def show_route(request: Request, name: RouteName, _: AdminDep) -> Response:
    return json_response((await route_store(request).get(name)).public())


@router.put(
    "/{name}",
    summary="Create or replace a route",
    responses=ok({**CHANGED, "links": ROUTE_LINKS}) | errors(*WITH_BODY, 404, 409),
)
async def put_route(request: Request, name: RouteName, spec: RouteSpec, principal: AdminDep) -> Response:
    await _check_models(request, name, spec)
    return await _changed(request, await changes.put(route_store(request), name, spec, who=_who(principal)))


@router.delete(
    "/{name}",
    summary="Delete a route (its name is then served as a plain model name again)",
    responses=ok({"model": Deleted}) | errors(404, 409),
)
async def delete_route(request: Request, name: RouteName, principal: AdminDep) -> Response:
    store = route_store(request)
    current = await store.get(name)
    return await _changed(request, await store.change(name, None, expected=current, who=_who(principal), why="manual"))


@router.post(
    "/{name}/promote",
    name="promote_route",
    summary="Send 100 % to one variant",
    responses=ok(CHANGED) | errors(*WITH_BODY, 404, 409),
)
async def promote(request: Request, name: RouteName, body: PromoteBody, principal: AdminDep) -> Response:
    return json_response((await promote_by_admin(request, name, body.model, principal)).public())


@router.post(
    "/{name}/rollback",
    name="roll_back_route",
    summary="Restore the route as it was before its last change",
    responses=ok(CHANGED) | errors(404, 409),
)
async def rollback(request: Request, name: RouteName, principal: AdminDep) -> Response:
    return json_response((await roll_back_by_admin(request, name, principal)).public())


@router.get(
    "/{name}/history",
    name="route_history",
    summary="Every change to the route, newest first",
    responses=ok({"model": RouteHistory}) | errors(404),
)
async def history(request: Request, name: RouteName, _: AdminDep) -> Response:
    await route_store(request).get(name)  # 404 for an unknown route
    return json_response({"history": await route_store(request).history(name)})


@router.get(
    "/{name}/stats",
    name="route_stats",
    summary="Per-variant signals since the route's last change",
    responses=ok({"model": RouteStats}) | errors(404),
)
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
