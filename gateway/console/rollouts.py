"""Rollouts in the browser (admins): each route's variants and weights, every canary's live signals against
its guard's thresholds with the samples they rest on, the history of changes with their reasons, and
promote / rollback, which make the same changes as POST /admin/routes/{name}/promote and /rollback."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from gateway.api.admin.routes import RouteName, promote_by_admin, roll_back_by_admin
from gateway.api.deps import route_stats, route_store
from gateway.console.web import PREFIX, ConsoleRoute, Viewer, form_fields, page, see_other, viewer
from gateway.errors import InvalidRequest
from gateway.model_routes.guard import signals
from gateway.model_routes.spec import StoredRoute
from gateway.model_routes.stats import VariantStats

router = APIRouter(prefix=f"{PREFIX}/rollouts", route_class=ConsoleRoute, include_in_schema=False)
Person = Annotated[Viewer, Depends(viewer)]
SHOWN_HISTORY = 10


def _weights(snapshot: dict[str, Any] | None) -> str:
    if not snapshot:
        return "(none)"
    variants = snapshot.get("variants", [])
    shown = (f"{v.get('model')}{'+' + v['adapter'] if v.get('adapter') else ''} {v.get('weight')}%" for v in variants)
    return ", ".join(shown)


async def _route_view(request: Request, route: StoredRoute) -> dict[str, Any]:
    seen = await route_stats(request).read(route.name, route.version)
    spec = route.spec
    stable = seen.get(spec.stable.served, VariantStats())
    variants = [
        {
            "served": v.served,
            "model": v.model,
            "adapter": v.adapter,
            "weight": v.weight,
            "stable": i == 0,
            "stats": seen.get(v.served, VariantStats()),
        }
        for i, v in enumerate(spec.variants)
    ]
    guarded = []
    if spec.guard is not None:
        for canary in spec.canaries:
            guarded.append(
                {
                    "canary": canary.served,
                    "signals": signals(spec.guard, stable, seen.get(canary.served, VariantStats())),
                }
            )
    history = await route_store(request).history(route.name)
    return {
        "name": route.name,
        "version": route.version,
        "updated_at": route.updated_at,
        "variants": variants,
        "guard": spec.guard,
        "canaries": guarded,
        "history": [
            {**entry, "before": _weights(entry.get("from")), "after": _weights(entry.get("to"))}
            for entry in history[:SHOWN_HISTORY]
        ],
        "can_roll_back": bool(history and history[0].get("from")),
    }


@router.get("")
async def rollouts(request: Request, person: Person) -> Response:
    person.require_admin()
    routes = await route_store(request).all()
    views = [await _route_view(request, routes[name]) for name in sorted(routes)]
    return page(request, "rollouts.html", person, routes=views)


@router.post("/{name}/promote")
async def promote(request: Request, person: Person, name: RouteName) -> Response:
    person.require_admin()
    fields = await form_fields(request, person.session.csrf)
    model = fields.get("model", "")
    if not model:
        raise InvalidRequest("say which variant to promote")
    await promote_by_admin(request, name, model, person.principal)
    return see_other(f"{PREFIX}/rollouts#route-{name}")


@router.post("/{name}/rollback")
async def rollback(request: Request, person: Person, name: RouteName) -> Response:
    person.require_admin()
    await form_fields(request, person.session.csrf)
    await roll_back_by_admin(request, name, person.principal)
    return see_other(f"{PREFIX}/rollouts#route-{name}")
