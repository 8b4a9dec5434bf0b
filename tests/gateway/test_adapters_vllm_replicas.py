"""Adapter versions on vLLM behind two gateway processes sharing a real redis-server: a version replaced
on one gateway is unloaded only once its traffic drained on every gateway, not just on the one that
noticed the change (the vLLM double streams slowly and says which versioned adapter answers)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from gateway.adapters.leases import AdapterLeases
from gateway.state.redis import RedisState
from testkit.processes import Service, wait_until
from testkit.vllm import peft_folder, register_adapter, running_vllm_double, vllm_stats
from tests.support.gateway import ADMIN_KEY, start_gateway

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
WORDS = 80  # a stream of 80 words, 0.05 s apart: 4 s on one version


@pytest.fixture(scope="module")
def stack(redis_server) -> Iterator[tuple[Service, Service, Service]]:
    with running_vllm_double(tokens=WORDS, token_delay=0.05) as vllm:
        env = {"REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/0"}
        backends = [{"kind": "vllm", "url": vllm.url, "name": "vllm"}]
        gateways = [start_gateway(backends, env=env), start_gateway(backends, env=env)]
        try:
            yield gateways[0], gateways[1], vllm
        finally:
            for gateway in gateways:
                gateway.stop()


def client(gateway: Service) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=30)


def serves(gateway: Service, model: str) -> bool:
    return model in {m.id for m in client(gateway).models.list().data}


def ask(gateway: Service, model: str) -> str:
    answer = client(gateway).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    return answer.choices[0].message.content


def register(gateway: Service, name: str, folder: Path) -> str:
    """Register through one gateway (the registry is in the shared Redis); the versioned name vLLM gets."""
    return f"{name}-{register_adapter(gateway.url, ADMIN_KEY, name, folder)['digest'][:8]}"


def test_a_replaced_version_stays_loaded_while_another_gateway_still_streams_on_it(stack, tmp_path):
    a, b, vllm = stack
    old = register(a, "drains", peft_folder(tmp_path, "drains-v1"))
    wait_until(lambda: serves(b, "drains"), timeout=10, what="gateway b routes the adapter")
    stream = client(b).chat.completions.create(model="drains", stream=True, messages=[{"role": "user", "content": "x"}])
    chunks = iter(stream)
    first = next(chunks)  # gateway b now streams on the old version
    new = register(a, "drains", peft_folder(tmp_path, "drains-v2"))  # a sees the old version stale at once
    began = time.monotonic()
    while time.monotonic() - began < 2.0:  # both gateways run their discovery (every second) meanwhile
        stats = vllm_stats(vllm.url)
        assert old not in stats["unloads"], "unloaded while gateway b still streamed on it"
        assert stats["in_flight"].get(old) == 1
        time.sleep(0.2)
    text = first.choices[0].delta.content + "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith(f"{old}:") and len(text.split()) == WORDS + 1  # finished whole on the old version
    wait_until(lambda: old in vllm_stats(vllm.url)["unloads"], timeout=10, what="old version unloaded once drained")
    assert old not in vllm_stats(vllm.url)["loaded"]
    for gateway in (a, b):
        wait_until(
            lambda g=gateway: ask(g, "drains").startswith(f"{new}:"),
            timeout=10,
            what="the new version answers on both gateways",
        )


def test_it_is_unloaded_only_after_the_last_gateway_with_traffic_finished(stack, tmp_path):
    """Streams on both gateways; the one on the gateway that replaced the version ends first."""
    a, b, vllm = stack
    old = register(a, "both", peft_folder(tmp_path, "both-v1"))
    wait_until(lambda: serves(b, "both"), timeout=10, what="gateway b routes the adapter")
    short = client(a).chat.completions.create(
        model="both", stream=True, max_tokens=20, messages=[{"role": "user", "content": "x"}]
    )
    long = iter(
        client(b).chat.completions.create(model="both", stream=True, messages=[{"role": "user", "content": "y"}])
    )
    next(long)
    register(a, "both", peft_folder(tmp_path, "both-v2"))
    assert len("".join(c.choices[0].delta.content or "" for c in short if c.choices).split()) == 21
    wait_until(
        lambda: vllm_stats(vllm.url)["in_flight"].get(old) == 1,
        timeout=10,
        what="a's stream ended on the server: only b's holds the old version",
    )
    began = time.monotonic()
    while time.monotonic() - began < 1.5:  # a runs its discovery (every second) meanwhile and finds it stale
        assert old not in vllm_stats(vllm.url)["unloads"], "unloaded while gateway b still streamed on it"
        time.sleep(0.1)
    rest = "".join(c.choices[0].delta.content or "" for c in long if c.choices)
    assert len(rest.split()) == WORDS  # the first word came before
    wait_until(lambda: old in vllm_stats(vllm.url)["unloads"], timeout=10, what="old version unloaded once drained")


async def test_a_lease_left_by_a_gateway_that_died_expires(redis_server):
    """A gateway killed mid-request never gives its lease back: it stops counting after lease_s."""
    redis = RedisState.from_url(f"redis://127.0.0.1:{redis_server.port}/0", timeout_s=2.0)
    try:
        in_flight = AdapterLeases(redis, lease_s=0.5)
        assert await in_flight.drained("http://vllm:8000", "gone-0123abcd")
        lease = await in_flight.begin("http://vllm:8000", "gone-0123abcd")
        assert lease is not None
        assert not await in_flight.drained("http://vllm:8000", "gone-0123abcd")
        assert await in_flight.drained("http://other:8000", "gone-0123abcd")  # per server
        await asyncio.sleep(0.7)
        assert await in_flight.drained("http://vllm:8000", "gone-0123abcd")
        held = await in_flight.begin("http://vllm:8000", "kept-0123abcd")
        await in_flight.end("http://vllm:8000", "kept-0123abcd", held)
        assert await in_flight.drained("http://vllm:8000", "kept-0123abcd")
    finally:
        await redis.close()
