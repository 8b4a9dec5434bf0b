"""A request's `model` -> what serves it: a plain model, or a route's sticky variant plus its fallbacks."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.access.principal import Principal
from gateway.errors import InvalidRequest, ModelNotFound
from gateway.model_routes.assign import bucket, choose
from gateway.model_routes.guard import variant_named
from gateway.model_routes.spec import StoredRoute, Variant
from gateway.model_routes.table import RouteTable
from gateway.protocol.requests import InferenceRequest
from gateway.replicas.pool import BackendPool


@dataclass(frozen=True, slots=True)
class Target:
    public: str  # what the client asked for: the route name, or the resolved model
    models: tuple[str, ...]  # the model to call, then the fallbacks to try in order
    route: StoredRoute | None = None
    variant: str | None = None  # the chosen variant's served model
    version: str = ""  # the model to call as the cache keys it (with its adapter's digest: BackendPool.version)
    model: str = field(init=False)  # the model to call first

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", self.models[0])


def assignment_unit(principal: Principal, req: InferenceRequest, client: str) -> str:
    """Who stays on one variant: the request's `user` as sent, else `key:<key id>`, else `addr:<client>`."""
    user = getattr(req, "user", None)
    if user:
        return str(user)
    if principal.key_id:
        return f"key:{principal.key_id}"
    return f"addr:{client}"


def with_params(req: InferenceRequest, variant: Variant) -> InferenceRequest:
    """The variant's sampling defaults under the request's own values."""
    given = req.model_fields_set | set(req.model_extra or {})
    update = {k: v for k, v in variant.params.items() if k not in given}
    return req.model_copy(update=update) if update else req


class Targeting:
    def __init__(self, *, table: RouteTable, pool: BackendPool) -> None:
        self.table = table
        self.pool = pool

    async def target(
        self, principal: Principal, req: InferenceRequest, *, client: str, forced: str | None = None
    ) -> tuple[Target, InferenceRequest]:
        """The target and the request as it will be sent (a variant's params applied). `client`: the
        caller's address (the assignment unit of last resort); `forced`: X-Gateway-Variant."""
        route = self.table.get(req.model)
        if route is None:
            model = await self.pool.resolve(req.model)
            principal.require_model(model)
            return Target(public=model, models=(model,), version=self.pool.version(model)), req
        principal.require_model(route.name)
        unit = assignment_unit(principal, req, client)
        variant = self._forced(forced, principal, route) or choose(route.spec, bucket(route.name, unit))
        chosen = await self._resolved(variant.served)
        fallbacks = [await self._resolved(self._fallback(name, unit)) for name in route.spec.fallbacks]
        models = tuple(m for m in (chosen, *fallbacks) if m)
        if not models:
            raise ModelNotFound(f"no model of route '{route.name}' is served now", param="model")
        return Target(
            public=route.name,
            models=models,
            route=route,
            variant=chosen or variant.served,
            version=self.pool.version(models[0]),
        ), with_params(req, variant)

    @staticmethod
    def _forced(wanted: str | None, principal: Principal, route: StoredRoute) -> Variant | None:
        """`X-Gateway-Variant: MODEL` picks the variant, for admin-scoped callers (testing a canary)."""
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
