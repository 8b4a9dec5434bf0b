"""A request's `model` -> what serves it: a plain model, or a route's sticky variant plus its fallbacks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request

from gateway.auth import Principal, raw_header
from gateway.backends.pool import BackendPool
from gateway.errors import InvalidRequest, ModelNotFound
from gateway.routes.assign import bucket, choose
from gateway.routes.guard import variant_named
from gateway.routes.spec import StoredRoute, Variant
from gateway.routes.table import RouteTable


@dataclass(frozen=True, slots=True)
class Target:
    public: str  # what the client asked for: the route name, or the resolved model
    models: tuple[str, ...]  # the model to call, then the fallbacks to try in order
    route: StoredRoute | None = None
    variant: str | None = None  # the chosen variant's served model
    version: str = ""  # the model to call as the cache keys it (with its adapter's digest: BackendPool.version)

    @property
    def model(self) -> str:
        return self.models[0]


def assignment_unit(request: Request, principal: Principal, req: Any) -> str:
    """Who stays on one variant: the request's `user` as sent, else `key:<key id>`, else `addr:<client>`."""
    user = getattr(req, "user", None)
    if user:
        return str(user)
    if principal.key_id:
        return f"key:{principal.key_id}"
    return f"addr:{request.client.host if request.client else '-'}"


def with_params(req: Any, variant: Variant) -> Any:
    """The variant's sampling defaults under the request's own values."""
    given = req.model_fields_set | set(req.model_extra or {})
    update = {k: v for k, v in variant.params.items() if k not in given}
    return req.model_copy(update=update) if update else req


class Targeting:
    def __init__(self, *, table: RouteTable, pool: BackendPool) -> None:
        self.table = table
        self.pool = pool

    async def target(self, request: Request, principal: Principal, req: Any) -> tuple[Target, Any]:
        """The target and the request as it will be sent (a variant's params applied)."""
        route = self.table.get(req.model)
        if route is None:
            model = await self.pool.resolve(req.model)
            principal.require_model(model)
            return Target(public=model, models=(model,), version=self.pool.version(model)), req
        principal.require_model(route.name)
        unit = assignment_unit(request, principal, req)
        variant = self._forced(request, principal, route) or choose(route.spec, bucket(route.name, unit))
        chosen = await self._resolved(variant.served)
        fallbacks = [await self._resolved(self._fallback(name, unit)) for name in route.spec.fallbacks]
        models = tuple(m for m in (chosen, *fallbacks) if m)
        if not models:
            raise ModelNotFound(f"no model of route '{route.name}' is served now", param="model")
        return Target(public=route.name, models=models, route=route, variant=chosen or variant.served,
                      version=self.pool.version(models[0])), with_params(req, variant)

    @staticmethod
    def _forced(request: Request, principal: Principal, route: StoredRoute) -> Variant | None:
        """`X-Gateway-Variant: MODEL` picks the variant, for admin-scoped callers (testing a canary)."""
        wanted = raw_header(request, b"x-gateway-variant")
        if not wanted or "admin" not in principal.scopes:
            return None
        variant = variant_named(route.spec, wanted)
        if variant is None:
            raise InvalidRequest(f"route '{route.name}' has no variant '{wanted}'", param="X-Gateway-Variant")
        return variant

    def _fallback(self, name: str, unit: str) -> str:
        route = self.table.get(name)
        return choose(route.spec, bucket(route.name, unit)).served if route else name

    async def _resolved(self, name: str) -> str | None:
        """The model the replicas know under `name`; None when none serves it (a fallback may)."""
        try:
            return await self.pool.resolve(name)
        except ModelNotFound:
            return None
