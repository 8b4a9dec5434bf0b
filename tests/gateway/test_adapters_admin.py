"""The adapter registry: `/admin/adapters` over HTTP, `python -m gateway adapters` on the same Redis,
clear 4xx errors for mistakes, and the base check a route variant `{"model", "adapter"}` relies on."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from gateway.adapters.registry import AdapterBaseMismatch, AdapterNotFound, AdapterRegistry, AdapterSpec
from gateway.state.redis import RedisState
from testkit.processes import REPO_ROOT, Service, redis_service
from testkit.vllm import VLLM_BASE, running_vllm_double
from tests.support.gateway import ADMIN_KEY, running_gateway

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
DIGEST = "ab" * 32


@pytest.fixture(scope="module")
def redis() -> Iterator[Service]:
    service = redis_service().start().wait_port()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def gateway(redis) -> Iterator[Service]:
    with (
        running_vllm_double() as double,
        running_gateway(
            [{"kind": "vllm", "url": double.url}], env={"REDIS_URL": f"redis://127.0.0.1:{redis.port}/0"}
        ) as gw,
    ):
        yield gw


def cli(redis: Service, *args: str) -> subprocess.CompletedProcess:
    env = {"REDIS_URL": f"redis://127.0.0.1:{redis.port}/0", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "gateway", "adapters", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def put(gateway: Service, name: str, body: dict, headers: dict | None = None) -> httpx.Response:
    return httpx.put(
        f"{gateway.url}/admin/adapters/{name}", json=body, headers=ADMIN if headers is None else headers, timeout=10
    )


def spec(**changes) -> dict:
    return {"base": VLLM_BASE, "version": 1, "digest": DIGEST, "files": {"peft": "/adapters/x"}, **changes}


def test_register_list_show_remove_over_http(gateway):
    r = put(gateway, "orders:v1", spec(digest="sha256:" + DIGEST))
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "orders:v1" and r.json()["digest"] == DIGEST  # prefix normalised away
    listed = httpx.get(f"{gateway.url}/admin/adapters", headers=ADMIN, timeout=10).json()["data"]
    assert [a["name"] for a in listed] == ["orders:v1"]
    shown = httpx.get(f"{gateway.url}/admin/adapters/orders:v1", headers=ADMIN, timeout=10).json()
    assert shown["base"] == VLLM_BASE and shown["files"] == {"peft": "/adapters/x"}
    models = httpx.get(f"{gateway.url}/v1/models", headers=ADMIN, timeout=10).json()["data"]
    assert "orders:v1" in {m["id"] for m in models}  # routable at once
    assert httpx.delete(f"{gateway.url}/admin/adapters/orders:v1", headers=ADMIN, timeout=10).status_code == 200
    gone = httpx.delete(f"{gateway.url}/admin/adapters/orders:v1", headers=ADMIN, timeout=10)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "adapter_not_found"
    models = httpx.get(f"{gateway.url}/v1/models", headers=ADMIN, timeout=10).json()["data"]
    assert "orders:v1" not in {m["id"] for m in models}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (spec(digest="not-a-digest"), "digest"),
        (spec(files={"onnx": "/x"}), "files"),
        (spec(files={}), "files"),
        (spec(version=0), "version"),
        ({"digest": DIGEST, "files": {"peft": "/x"}}, "base"),
        (spec(colour="red"), "colour"),
    ],
)
def test_mistakes_are_clear_400s_in_openais_shape(gateway, body, field):
    r = put(gateway, "bad", body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and field in (error["param"] or "") + error["message"]


def test_a_bad_name_is_a_400_and_admin_scope_is_required(gateway):
    r = put(gateway, "-starts-with-a-dash", spec())
    assert r.status_code == 400 and r.json()["error"]["param"] == "path.name"  # as any path parameter
    assert put(gateway, "orders", spec(), headers={}).status_code == 401
    assert httpx.get(f"{gateway.url}/admin/adapters", timeout=10).status_code == 401


def test_the_cli_and_the_api_share_the_registry(gateway, redis):
    made = cli(redis, "--json", "register", "reviews", "--base", VLLM_BASE, "--digest", DIGEST, "--peft", "/a/r")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["files"] == {"peft": "/a/r"}
    shown = httpx.get(f"{gateway.url}/admin/adapters/reviews", headers=ADMIN, timeout=10)
    assert shown.status_code == 200 and shown.json()["digest"] == DIGEST
    assert put(gateway, "summaries", spec()).status_code == 200
    listed = cli(redis, "list")
    assert listed.returncode == 0 and "reviews" in listed.stdout and "summaries" in listed.stdout
    assert cli(redis, "remove", "reviews").returncode == 0
    missing = cli(redis, "show", "reviews")
    assert missing.returncode == 1 and "no adapter named 'reviews'" in missing.stderr
    bad = cli(redis, "register", "x", "--base", "b", "--digest", "nope", "--gguf", "/x.gguf")
    assert bad.returncode == 2 and "digest" in bad.stderr


async def test_check_base_accepts_the_adapters_own_base_only():
    registry = AdapterRegistry.for_redis(RedisState(None))
    await registry.register("orders", AdapterSpec(base="smollm2", digest=DIGEST, files={"gguf": "/a/o.gguf"}))
    assert (await registry.check_base("orders", "smollm2")).name == "orders"
    with pytest.raises(AdapterBaseMismatch) as caught:
        await registry.check_base("orders", "llama3.2:1b")
    assert caught.value.status == 400 and "smollm2" in caught.value.message
    with pytest.raises(AdapterNotFound):
        await registry.check_base("reviews", "smollm2")
