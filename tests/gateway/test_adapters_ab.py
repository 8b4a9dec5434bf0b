"""A/B between two versions of one adapter on one route, with one base model in memory, on vLLM (the
double: each version gets its own name, `NAME-<digest8>`, and each answer says which name made it).
The same on a real llama-server is in test_adapters_llamacpp.py."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from gateway.model_routes.assign import bucket, choose
from gateway.model_routes.spec import RouteSpec
from testkit.processes import Service
from testkit.vllm import VLLM_BASE, peft_folder, register_adapter, running_vllm_double, vllm_stats
from tests.support.gateway import ADMIN_KEY, running_gateway

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
USERS = [f"user-{i}" for i in range(40)]


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[Service, Service]]:
    with running_vllm_double() as vllm, running_gateway([{"kind": "vllm", "url": vllm.url, "name": "vllm"}]) as gateway:
        yield gateway, vllm


def ab_route(base: str, stable: str, canary: str, canary_weight: int) -> dict:
    return {
        "variants": [
            {"model": base, "adapter": stable, "weight": 100 - canary_weight},
            {"model": base, "adapter": canary, "weight": canary_weight},
        ]
    }


def chat(gateway: Service, model: str, user: str) -> httpx.Response:
    body = {"model": model, "user": user, "max_tokens": 3, "messages": [{"role": "user", "content": "hello"}]}
    response = httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=ADMIN, timeout=20)
    assert response.status_code == 200, response.text
    return response


def test_two_versions_of_one_adapter_split_a_route_on_one_vllm_server(stack, tmp_path):
    gateway, vllm = stack
    names = {}
    for tag in ("v1", "v2"):
        digest = register_adapter(gateway.url, ADMIN_KEY, f"support:{tag}", peft_folder(tmp_path, tag))["digest"]
        names[f"support:{tag}"] = f"support-{digest[:8]}"  # the name each version has on the server
    route = ab_route(VLLM_BASE, "support:v1", "support:v2", 30)
    assert httpx.put(f"{gateway.url}/admin/routes/support", json=route, headers=ADMIN, timeout=10).status_code == 200

    spec = RouteSpec.model_validate(route)
    seen: Counter[str] = Counter()
    for user in USERS:
        answer = chat(gateway, "support", user)
        variant = answer.headers["X-Model-Variant"]
        assert variant == choose(spec, bucket("support", user)).served  # the user's sticky variant
        assert answer.json()["choices"][0]["message"]["content"].startswith(names[variant] + ":")
        seen[variant] += 1
    assert set(seen) == {"support:v1", "support:v2"} and seen["support:v1"] > seen["support:v2"]

    stats = vllm_stats(vllm.url)
    assert sorted(stats["loaded"]) == sorted(names.values())  # both versions on the one server, one base
    assert {name: stats["requests"][name] for name in names.values()} == {names[v]: n for v, n in seen.items()}
    assert stats["loads"].count(names["support:v1"]) == stats["loads"].count(names["support:v2"]) == 1


def test_a_route_refuses_an_adapter_of_another_base_or_an_unknown_one(stack, tmp_path):
    gateway, _ = stack
    register_adapter(gateway.url, ADMIN_KEY, "other:v1", peft_folder(tmp_path, "other"), base="another-base")
    for adapter, status, code in (("other:v1", 400, "adapter_base_mismatch"), ("nobody:v1", 404, "adapter_not_found")):
        route = {"variants": [{"model": VLLM_BASE, "adapter": adapter, "weight": 100}]}
        r = httpx.put(f"{gateway.url}/admin/routes/mixed", json=route, headers=ADMIN, timeout=10)
        assert r.status_code == status and r.json()["error"]["code"] == code, r.text
