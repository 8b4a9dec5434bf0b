"""The response cache keys an adapter by its digest. Over HTTP, with a real redis-server and the vLLM
double (each answer says which versioned adapter, `NAME-<digest8>`, made it): a new version registered
under the same name is never answered from the old version's cached answers, and going back to the old
version finds the old version's own answers again."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from testkit.processes import Service, wait_until
from testkit.vllm import peft_folder, register_adapter, running_vllm_double, vllm_stats
from tests.support.gateway import ADMIN_KEY, running_gateway

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def stack(redis_server) -> Iterator[tuple[Service, Service]]:
    with (
        running_vllm_double() as vllm,
        running_gateway(
            [{"kind": "vllm", "url": vllm.url, "name": "vllm"}],
            env={"REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/0"},
        ) as gateway,
    ):
        yield gateway, vllm


def chat(gateway: Service, model: str, content: str) -> httpx.Response:
    body = {"model": model, "temperature": 0, "messages": [{"role": "user", "content": content}]}
    response = httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=ADMIN, timeout=20)
    assert response.status_code == 200, response.text
    return response


def text(response: httpx.Response) -> str:
    return response.json()["choices"][0]["message"]["content"]


def hit(gateway: Service, model: str, content: str) -> httpx.Response:
    """The store happens just after the answer: ask until the same request is a HIT."""
    seen: dict[str, httpx.Response] = {}

    def cached() -> bool:
        seen["r"] = chat(gateway, model, content)
        return seen["r"].headers["X-Cache"] == "HIT"

    wait_until(cached, timeout=5, what="the answer cached")
    return seen["r"]


def served(vllm: Service) -> int:
    return sum(vllm_stats(vllm.url)["requests"].values())


def test_a_new_version_under_the_same_name_never_gets_the_old_versions_cached_answers(stack, tmp_path):
    gateway, vllm = stack
    question = "What are your opening hours?"
    v1 = register_adapter(gateway.url, ADMIN_KEY, "faq", peft_folder(tmp_path, "faq-v1"))["digest"]
    first = chat(gateway, "faq", question)
    assert first.headers["X-Cache"] == "MISS" and text(first).startswith(f"faq-{v1[:8]}:")
    assert text(hit(gateway, "faq", question)) == text(first)

    v2 = register_adapter(gateway.url, ADMIN_KEY, "faq", peft_folder(tmp_path, "faq-v2"))["digest"]
    calls = served(vllm)
    second = chat(gateway, "faq", question)
    assert second.headers["X-Cache"] == "MISS", "the new version was answered from the old version's cache"
    assert text(second).startswith(f"faq-{v2[:8]}:") and served(vllm) == calls + 1
    assert text(hit(gateway, "faq", question)) == text(second)

    # Back to the first version (a rollback): its own cached answer, without a backend call.
    register_adapter(gateway.url, ADMIN_KEY, "faq", tmp_path / "faq-v1", digest=v1)
    calls = served(vllm)
    back = chat(gateway, "faq", question)
    assert back.headers["X-Cache"] == "HIT" and text(back) == text(first) and served(vllm) == calls


def test_a_route_variant_on_an_adapter_is_cached_under_that_adapters_version(stack, tmp_path):
    """Through a route the key is the chosen variant's adapter and digest: re-registering it misses too."""
    gateway, vllm = stack
    register_adapter(gateway.url, ADMIN_KEY, "desk:v1", peft_folder(tmp_path, "desk-v1"))
    route = {"variants": [{"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "adapter": "desk:v1", "weight": 100}]}
    assert httpx.put(f"{gateway.url}/admin/routes/desk", json=route, headers=ADMIN, timeout=10).status_code == 200
    first = chat(gateway, "desk", "Where is my parcel?")
    assert first.headers["X-Model-Variant"] == "desk:v1"
    hit(gateway, "desk", "Where is my parcel?")
    new = register_adapter(gateway.url, ADMIN_KEY, "desk:v1", peft_folder(tmp_path, "desk-v1b"))["digest"]
    again = chat(gateway, "desk", "Where is my parcel?")
    assert again.headers["X-Cache"] == "MISS" and text(again).startswith(f"desk-{new[:8]}:")
