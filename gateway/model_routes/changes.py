"""The route changes an operator makes, shared by the admin API and the CLI."""

from __future__ import annotations

from gateway.errors import ClientError, ModelNotFound
from gateway.model_routes.guard import promoted, variant_named
from gateway.model_routes.spec import RouteSpec, StoredRoute
from gateway.model_routes.store import RouteStore


class NothingToRollBack(ClientError):
    status = 409
    code = "nothing_to_roll_back"


async def put(store: RouteStore, name: str, spec: RouteSpec, *, who: str) -> StoredRoute:
    current = (await store.all()).get(name)
    route = await store.change(name, spec, expected=current, who=who, why="manual")
    assert route is not None
    return route


async def promote(store: RouteStore, name: str, model: str, *, who: str) -> StoredRoute:
    """`model`'s variant at 100 % and first."""
    current = await store.get(name)
    variant = variant_named(current.spec, model)
    if variant is None:
        raise ModelNotFound(f"route '{name}' has no variant '{model}'", param="model")
    route = await store.change(name, promoted(current.spec, variant.served), expected=current, who=who, why="promote")
    assert route is not None
    return route


async def roll_back(store: RouteStore, name: str, *, who: str) -> StoredRoute:
    """The route as it was before its last change."""
    current = await store.get(name)
    history = await store.history(name)
    before = history[0]["from"] if history else None
    if before is None:
        raise NothingToRollBack(f"route '{name}' has no earlier version to roll back to")
    spec = RouteSpec.model_validate({k: v for k, v in before.items() if k in RouteSpec.model_fields})
    route = await store.change(
        name,
        spec,
        expected=current,
        who=who,
        why="rollback",
        reason={"signal": "manual", "to_version": before["version"]},
    )
    assert route is not None
    return route
