"""The vLLM adapter driver against the vLLM double, through the real gateway and the `openai` SDK:
load on first use, reuse, a replica that holds the adapter preferred, reload after a restart, unload
of a replaced version once its requests drained, and a clear 503 when no replica can take another."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from testkit.processes import Service, wait_until
from testkit.vllm import VLLM_BASE, peft_folder, register_adapter, running_vllm_double, vllm_restart, vllm_stats
from tests.support.gateway import ADMIN_KEY, running_gateway

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


def register(gateway: Service, name: str, folder: Path, digest: str | None = None) -> dict:
    return register_adapter(gateway.url, ADMIN_KEY, name, folder, digest)


def ask(gateway: Service, model: str) -> str:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=20)
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert answer.model == model  # the public name, never the versioned one
    return answer.choices[0].message.content


def owners(gateway: Service, model: str) -> set[str]:
    listing = httpx.get(gateway.url + "/v1/models", headers=ADMIN, timeout=10).json()["data"]
    return next((set(m["owned_by"].split(",")) for m in listing if m["id"] == model), set())


@pytest.fixture(scope="module")
def doubles() -> Iterator[tuple[Service, Service]]:
    with running_vllm_double(tokens=60, token_delay=0.05) as a, running_vllm_double(tokens=60, token_delay=0.05) as b:
        yield a, b


@pytest.fixture(scope="module")
def gateway(doubles) -> Iterator[Service]:
    a, b = doubles
    with running_gateway(
        [{"kind": "vllm", "url": a.url, "name": "vllm-a"}, {"kind": "vllm", "url": b.url, "name": "vllm-b"}]
    ) as service:
        yield service


def holder(doubles, version: str) -> tuple[Service, str]:
    named = zip(doubles, ("vllm-a", "vllm-b"), strict=True)
    held = [(d, n) for d, n in named if version in vllm_stats(d.url)["loaded"]]
    assert len(held) == 1, f"{version} is held by {[n for _, n in held]}"
    return held[0]


def test_adapter_loads_on_first_use_then_is_reused_on_the_replica_that_holds_it(gateway, doubles, tmp_path):
    record = register(gateway, "orders", peft_folder(tmp_path, "orders-peft"))
    version = f"orders-{record['digest'][:8]}"
    assert all(version not in vllm_stats(d.url)["loaded"] for d in doubles)  # nothing loaded before use
    assert ask(gateway, "orders").startswith(f"{version}:")  # the double says which model answered
    server, name = holder(doubles, version)
    wait_until(lambda: owners(gateway, "orders") == {name}, timeout=10, what="only the holder advertises orders")
    for _ in range(4):
        assert ask(gateway, "orders").startswith(f"{version}:")
    stats = [vllm_stats(d.url) for d in doubles]
    assert sum(s["loads"].count(version) for s in stats) == 1  # loaded once, reused
    assert vllm_stats(server.url)["requests"][version] == 5  # every request went to the holder


def test_the_base_model_is_served_without_loading_anything(gateway, doubles):
    before = [len(vllm_stats(d.url)["loads"]) for d in doubles]
    assert ask(gateway, VLLM_BASE).startswith(f"{VLLM_BASE}:")
    assert [len(vllm_stats(d.url)["loads"]) for d in doubles] == before


def test_an_adapter_lost_in_a_restart_is_loaded_again_and_the_request_retried(gateway, doubles, tmp_path):
    record = register(gateway, "restarts", peft_folder(tmp_path, "restarts-peft"))
    version = f"restarts-{record['digest'][:8]}"
    ask(gateway, "restarts")
    server, _ = holder(doubles, version)
    vllm_restart(server.url)
    assert version not in vllm_stats(server.url)["loaded"]
    assert ask(gateway, "restarts").startswith(f"{version}:")  # no error reached the client
    assert vllm_stats(server.url)["loads"].count(version) == 2


def test_a_replaced_version_is_unloaded_once_its_requests_have_drained(gateway, doubles, tmp_path):
    old = register(gateway, "drains", peft_folder(tmp_path, "drains-v1"))
    old_version = f"drains-{old['digest'][:8]}"
    ask(gateway, "drains")
    server, _ = holder(doubles, old_version)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=20)
    stream = client.chat.completions.create(model="drains", stream=True, messages=[{"role": "user", "content": "x"}])
    first = next(iter(stream))  # the old version is now serving a request
    assert first.model == "drains"
    new = register(gateway, "drains", peft_folder(tmp_path, "drains-v2"))  # a new version replaces it
    new_version = f"drains-{new['digest'][:8]}"
    assert old_version in vllm_stats(server.url)["loaded"]  # still streaming: not unloaded under it
    text = first.choices[0].delta.content + "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.startswith(f"{old_version}:") and len(text.split()) == 61  # finished whole on the old version
    wait_until(lambda: old_version in vllm_stats(server.url)["unloads"], timeout=10, what="old version unloaded")
    assert ask(gateway, "drains").startswith(f"{new_version}:")


def test_removed_adapters_are_unloaded_and_no_longer_served(gateway, doubles, tmp_path):
    record = register(gateway, "removed", peft_folder(tmp_path, "removed-peft"))
    version = f"removed-{record['digest'][:8]}"
    ask(gateway, "removed")
    server, _ = holder(doubles, version)
    assert httpx.delete(f"{gateway.url}/admin/adapters/removed", headers=ADMIN, timeout=10).status_code == 200
    wait_until(lambda: version in vllm_stats(server.url)["unloads"], timeout=10, what="removed adapter unloaded")
    with pytest.raises(openai.NotFoundError):
        ask(gateway, "removed")


def test_a_clear_503_when_no_replica_can_take_another_adapter(tmp_path):
    with (
        running_vllm_double() as a,
        running_vllm_double() as b,
        running_gateway(
            [
                {"kind": "vllm", "url": a.url, "name": "a", "max_adapters": 1},
                {"kind": "vllm", "url": b.url, "name": "b", "max_adapters": 1},
            ]
        ) as gateway,
    ):
        for name in ("first", "second", "third"):
            register(gateway, name, peft_folder(tmp_path, name))
        ask(gateway, "first")
        ask(gateway, "second")  # the replica holding `first` is full: the other one takes it
        assert sorted(len(vllm_stats(d.url)["loaded"]) for d in (a, b)) == [1, 1]
        with pytest.raises(openai.APIStatusError) as caught:
            ask(gateway, "third")
        assert caught.value.status_code == 503
        error = caught.value.body if isinstance(caught.value.body, dict) else {}
        assert error.get("code") == "adapter_capacity_full", caught.value.body
        assert "max_adapters" in error.get("message", "")
        assert max(vllm_stats(d.url)["peak"] for d in (a, b)) == 1  # the cap held on both replicas
        ask(gateway, "first")  # and what is loaded still serves
