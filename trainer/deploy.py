"""Deploy: put a pushed NAME:vN on a gateway route as a canary, through the gateway's admin API.

The route's stable (first) variant stays first with 100 - canary_percent; the new version joins with
canary_percent and the guard's step plan, so the gateway promotes it or rolls it back on live traffic.
A route that does not exist yet is created with the new version at 100 %. Any other variant of the
route (an earlier canary) is dropped: one canary at a time, judged against the stable variant.

Every gateway refusal becomes one `DeployError` line; the version stays pushed in Ollama either way.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx

from trainer.config import DeployConfig, secret_from_environment
from trainer.errors import DeployError

log = logging.getLogger(__name__)
SERVER_FIELDS = ("name", "version", "updated_at")  # set by the gateway, never sent back in a PUT


def admin_key(deploy: DeployConfig) -> str:
    key = secret_from_environment(deploy.admin_key_env, DeployError)
    if not key:
        raise DeployError(
            f"deploy needs an admin-scoped gateway key in ${deploy.admin_key_env} (deploy.admin_key_env); it is not set"
        )
    return key


def _error_text(response: httpx.Response) -> str:
    """The gateway's OpenAI-shaped error message (and the field it names), else the raw body."""
    try:
        error = response.json().get("error", {})
        message = error.get("message") or response.text
        param = error.get("param")
        return f"{message} (field {param})" if param and str(param) not in message else message
    except (ValueError, AttributeError):
        return response.text.strip()[:300] or response.reason_phrase


class GatewayAdmin:
    """The few admin calls deploy makes; every non-2xx answer becomes a DeployError naming the call."""

    def __init__(self, deploy: DeployConfig, key: str) -> None:
        self.deploy = deploy
        self.client = httpx.Client(
            base_url=deploy.gateway_url, timeout=deploy.timeout_s, headers={"Authorization": f"Bearer {key}"}
        )

    def __enter__(self) -> GatewayAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise DeployError(
                f"cannot reach the gateway at {self.deploy.gateway_url} ({method} {path}): {exc}"
            ) from None
        if response.status_code in (401, 403):
            raise DeployError(
                f"gateway refused {method} {path} ({response.status_code}): {_error_text(response)}; "
                f"is ${self.deploy.admin_key_env} an admin-scoped key of {self.deploy.gateway_url}?"
            )
        if response.is_error:
            raise DeployError(f"gateway refused {method} {path} ({response.status_code}): {_error_text(response)}")
        return response

    def _json(self, method: str, path: str, key: str, **kwargs: Any) -> dict[str, Any]:
        """The JSON answer, which must hold `key`; anything else is not the gateway's admin API answering."""
        response = self._call(method, path, **kwargs)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or key not in body:
            raise DeployError(
                f"{self.deploy.gateway_url} answered {method} {path} without {key!r}: is it the "
                f"gateway? ({response.text.strip()[:200]})"
            )
        return body

    def get_route(self, name: str) -> dict[str, Any] | None:
        """The route, or None when there is none. Read from the list: a 404 from GET /admin/routes/NAME
        could also mean a gateway without the route API, which must not read as "create it"."""
        routes = self._json("GET", "/admin/routes", "routes")["routes"]
        return next((r for r in routes if r.get("name") == name), None)

    def put_route(self, name: str, route: dict[str, Any]) -> dict[str, Any]:
        return self._json("PUT", f"/admin/routes/{name}", "variants", json=route)

    def model_ids(self) -> set[str]:
        return {m["id"] for m in self._json("GET", "/v1/models", "data")["data"]}

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        """One chat completion through the gateway (trainer/vs_deployed.py)."""
        return self._json("POST", "/v1/chat/completions", "choices", json=body)

    def stable_variant(self, route: str) -> dict[str, Any]:
        """The route's stable (first) variant, what its users get now; the route must exist."""
        current = self.get_route(route)
        if current is None:
            raise DeployError(
                f"evaluation.baseline is route:{route} but the gateway at {self.deploy.gateway_url} "
                f"has no route {route!r}: nothing is deployed to compare with (for the first "
                "version, use evaluation.baseline: base)"
            )
        return current["variants"][0]


def plan_guard(current: dict[str, Any] | None, deploy: DeployConfig) -> dict[str, Any]:
    """The route's guard with the config's overrides and step plan laid over it."""
    guard = dict(current or {})
    guard.update(deploy.guard.model_dump(exclude_none=True))
    guard["steps"] = list(deploy.steps)
    if deploy.step_after_requests is not None:
        guard["step_after_requests"] = deploy.step_after_requests
    return guard


def plan_route(current: dict[str, Any] | None, model: str, deploy: DeployConfig) -> dict[str, Any]:
    """The PUT body: a new route at 100 %, or the current stable variant plus `model` as the canary."""
    new = {"model": model, "weight": 100, "params": {}, "adapter": None}
    if current is None:
        return {"variants": [new], "fallbacks": [], "shadow": None, "guard": plan_guard(None, deploy)}
    body = {k: v for k, v in current.items() if k not in SERVER_FIELDS}
    stable = {**current["variants"][0], "weight": 100 - deploy.canary_percent}
    body["variants"] = [stable, {**new, "weight": deploy.canary_percent}]
    body["guard"] = plan_guard(current.get("guard"), deploy)
    return body


def preflight(deploy: DeployConfig, baseline_route: str | None = None) -> None:
    """Before anything is pushed: the key is set, the gateway answers, it accepts the key, and the route
    the new version is to be compared with (evaluation.baseline route:NAME) exists."""
    with GatewayAdmin(deploy, admin_key(deploy)) as admin:
        admin.get_route(deploy.route)
        if baseline_route is not None:
            admin.stable_variant(baseline_route)


def wait_for_model(admin: GatewayAdmin, model: str, wait_s: float) -> None:
    """The gateway learns of new Ollama models by polling its backends; a PUT before that is a 404.
    With wait_s 0 the PUT goes at once and the gateway itself judges the model."""
    if wait_s <= 0:
        return
    deadline = time.monotonic() + wait_s
    while model not in admin.model_ids():
        if time.monotonic() >= deadline:
            raise DeployError(
                f"the gateway at {admin.deploy.gateway_url} does not list {model} after {wait_s:g}s: "
                "does it serve the Ollama that push used?"
            )
        time.sleep(0.5)


def deploy_version(deploy: DeployConfig, model: str) -> dict[str, Any]:
    """Put `model` on `deploy.route`; returns the record the version's manifest keeps."""
    with GatewayAdmin(deploy, admin_key(deploy)) as admin:
        wait_for_model(admin, model, deploy.model_wait_s)
        current = admin.get_route(deploy.route)
        body = plan_route(current, model, deploy)
        stored = admin.put_route(deploy.route, body)
    kept = {v["model"] for v in body["variants"]}
    record = {
        "route": deploy.route,
        "gateway_url": deploy.gateway_url,
        "model": model,
        "action": "created" if current is None else "canary",
        "stable": None if current is None else current["variants"][0]["model"],
        "replaced": [] if current is None else [v["model"] for v in current["variants"] if v["model"] not in kept],
        "route_version": stored.get("version"),
        "updated_at": stored.get("updated_at"),
        "variants": stored.get("variants", body["variants"]),
        "guard": stored.get("guard", body["guard"]),
    }
    log.info("route %s: %s", deploy.route, ", ".join(f"{v['model']} {v['weight']}%" for v in record["variants"]))
    return record
