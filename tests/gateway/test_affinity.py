"""Prefix-affinity routing through the replica pool's public interface (`refresh`, `open`, leases).

The replicas are OpenAI-compatible servers answering only their model list (an aiohttp app on
loopback, one path prefix per replica); `open`'s start function stands for the backend call and
reports which replica it was given, or fails as a broken replica would.
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.backends.base import Backend
from gateway.errors import BackendUnavailable, ModelNotFound, NoHealthyBackend
from gateway.observability.metrics import GatewayMetrics
from gateway.protocol.requests import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from gateway.replicas.affinity import affinity_key
from gateway.replicas.build import build_pool
from gateway.replicas.pool import BackendPool, Lease
from gateway.settings import Settings
from testkit.processes import REPO_ROOT, free_port

MODEL = "m"


def chat(*messages: tuple[str, str]) -> ChatCompletionRequest:
    return ChatCompletionRequest(model=MODEL, messages=[{"role": r, "content": c} for r, c in messages])


def key_of(i: int) -> bytes:
    return affinity_key(chat(("user", f"conversation {i}: " + "context " * 50)), 2048)  # type: ignore[return-value]


@pytest.fixture(scope="module")
async def models_server() -> AsyncIterator[tuple[str, dict[str, list[str]]]]:
    """GET /<replica>/v1/models answers what `served[replica]` says (tests edit it)."""
    served: dict[str, list[str]] = {}

    async def models(request: web.Request) -> web.Response:
        names = served.get(request.match_info["replica"], [])
        return web.json_response({"object": "list", "data": [{"id": n, "object": "model"} for n in names]})

    app = web.Application()
    app.router.add_get("/{replica}/v1/models", models)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", served
    await runner.cleanup()


async def make_pool(
    server: tuple[str, dict[str, list[str]]], replicas: dict[str, list[str]], **settings: Any
) -> BackendPool:
    base, served = server
    served.update(replicas)
    cfg = Settings(
        _env_file=None,
        backends=[{"kind": "openai", "url": f"{base}/{name}", "name": name} for name in replicas],
        **settings,
    )
    pool = build_pool(cfg, GatewayMetrics(CollectorRegistry()))
    await pool.refresh()
    return pool


async def served_by(backend: Backend) -> str:
    return backend.name


async def route(pool: BackendPool, key: bytes | None, model: str = MODEL, **kw: Any) -> tuple[Lease, str]:
    return await pool.open(model, served_by, affinity_key=key, **kw)


async def route_once(pool: BackendPool, key: bytes | None, model: str = MODEL, **kw: Any) -> str:
    lease, name = await route(pool, key, model, **kw)
    lease.done()
    return name


AFFINITY = {"routing_policy": "prefix_affinity"}


async def test_a_conversation_sticks_to_one_replica_and_conversations_spread(models_server) -> None:
    pool = await make_pool(models_server, {"a": [MODEL], "b": [MODEL], "c": [MODEL]}, **AFFINITY)
    homes = {}
    for i in range(300):
        names = {await route_once(pool, key_of(i)) for _ in range(3)}
        assert len(names) == 1, f"conversation {i} went to {names}"
        homes[i] = names.pop()
    split = Counter(homes.values())
    assert set(split) == {"a", "b", "c"} and all(60 <= n <= 140 for n in split.values()), split
    await pool.aclose()


PICKS_SCRIPT = """
import sys
from types import SimpleNamespace
from gateway.replicas.affinity import pick_bounded
from tests.gateway.test_affinity import key_of
replicas = [SimpleNamespace(name=n, in_flight=0) for n in sys.argv[1:]]
print(" ".join(pick_bounded(key_of(i), replicas, lambda r: True, 1.25).name for i in range(100)))
"""


async def test_every_gateway_process_picks_the_same_replica(models_server) -> None:
    # Other processes (other gateway replicas: another hash seed, the replicas listed in another order)
    # compute the same homes as this pool: nothing is shared, nothing needs to be.
    pool = await make_pool(models_server, {"a": [MODEL], "b": [MODEL], "c": [MODEL]}, **AFFINITY)
    here = " ".join([await route_once(pool, key_of(i)) for i in range(100)])
    for seed, order in (("1", ["c", "a", "b"]), ("2", ["b", "c", "a"])):
        out = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", PICKS_SCRIPT, *order],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONHASHSEED": seed},
            check=True,
        )
        assert out.stdout.strip() == here
    await pool.aclose()


async def test_follow_up_turns_share_the_first_turns_replica(models_server) -> None:
    pool = await make_pool(models_server, {"a": [MODEL], "b": [MODEL]}, **AFFINITY)
    system = ("system", "You are a support agent for ACME. " * 40)  # longer than the prefix: shared by all
    for i in range(40):
        turns = [system, ("user", f"ticket {i}: my order {i * 7919} never arrived")]
        first = await route_once(pool, affinity_key(chat(*turns), 512))
        turns += [("assistant", "Sorry to hear that."), ("user", "Any news?")]
        assert await route_once(pool, affinity_key(chat(*turns), 512)) == first
    await pool.aclose()


def test_the_key_ignores_later_turns_and_separates_conversations() -> None:
    sys_prompt = ("system", "shared instructions " * 200)
    one = affinity_key(chat(sys_prompt, ("user", "doc A")), 1024)
    assert one == affinity_key(chat(sys_prompt, ("user", "doc A"), ("assistant", "x"), ("user", "more")), 1024)
    assert one != affinity_key(chat(sys_prompt, ("user", "doc B")), 1024)
    assert affinity_key(CompletionRequest(model=MODEL, prompt="p" * 100 + "x"), 100) == affinity_key(
        CompletionRequest(model=MODEL, prompt="p" * 100 + "y"), 100
    )
    assert affinity_key(EmbeddingRequest(model=MODEL, input="hi"), 1024) is None


async def test_least_in_flight_stays_the_default_and_ignores_the_key(models_server) -> None:
    pool = await make_pool(models_server, {"a": [MODEL], "b": [MODEL]})
    assert Counter([await route_once(pool, key_of(1)) for _ in range(10)]) == {"a": 5, "b": 5}
    await pool.aclose()


async def test_the_policy_can_be_chosen_per_model(models_server) -> None:
    pool = await make_pool(
        models_server, {"a": [MODEL, "other"], "b": [MODEL, "other"]}, routing_policies={MODEL: "prefix_affinity"}
    )
    assert len({await route_once(pool, key_of(2)) for _ in range(10)}) == 1
    assert len({await route_once(pool, key_of(2), "other") for _ in range(10)}) == 2
    # an explicit policy (what a route will carry) wins over the settings
    assert len({await route_once(pool, key_of(2), "other", policy="prefix_affinity") for _ in range(10)}) == 1
    await pool.aclose()


@pytest.mark.parametrize("memory", [0, 16_384])
@pytest.mark.parametrize("factor", [1.0, 1.25, 2.0])
async def test_no_replica_takes_more_than_factor_times_the_mean(models_server, factor: float, memory: int) -> None:
    pool = await make_pool(
        models_server,
        {"a": [MODEL], "b": [MODEL], "c": [MODEL]},
        **AFFINITY,
        affinity_load_factor=factor,
        affinity_move_factor=factor,
        affinity_memory=memory,
    )
    held: list[Lease] = []
    for _ in range(24):  # one hot conversation: every request wants the same replica
        lease, _ = await route(pool, key_of(7))
        held.append(lease)
        load = Counter(x.replica.name for x in held)
        assert max(load.values()) <= math.ceil(factor * len(held) / 3), load
    load = Counter(x.replica.name for x in held)
    home = held[0].replica.name
    if not memory:  # the ring fills the home replica up to its bound, not beyond, before moving on
        assert load[home] == math.ceil(factor * 24 / 3)
    last = held[-1].replica.name
    for lease in held:
        lease.done()
    # the load gone: without memory the ring sends the key home; with it, to where it was served last
    assert await route_once(pool, key_of(7)) == (last if memory else home)
    await pool.aclose()


def home_of(i: int, names: list[str]) -> str:
    """The ring's replica for conversation `i` among idle `names` (what every gateway computes)."""
    from types import SimpleNamespace

    from gateway.replicas.affinity import pick_bounded

    chosen = pick_bounded(key_of(i), [SimpleNamespace(name=n, in_flight=0) for n in names], lambda r: True, 1.25)
    assert chosen is not None
    return chosen.name


async def test_a_conversation_the_bound_moved_stays_where_it_was_served(models_server) -> None:
    # Two conversations with the same home arrive together: the bound (factor 1) sends the second to the
    # other replica, which now holds its prompt. Its later turns go there, not home to compute it again.
    pool = await make_pool(models_server, {"a": [MODEL], "b": [MODEL]}, **AFFINITY, affinity_load_factor=1.0)
    ring_only = await make_pool(
        models_server, {"a": [MODEL], "b": [MODEL]}, **AFFINITY, affinity_load_factor=1.0, affinity_memory=0
    )
    first, second = [i for i in range(100) if home_of(i, ["a", "b"]) == "a"][:2]
    for p in (pool, ring_only):
        hold, name = await route(p, key_of(first))
        assert name == "a"
        assert await route_once(p, key_of(second)) == "b"  # a is at the bound: the chat spills
        hold.done()
    assert {await route_once(pool, key_of(second)) for _ in range(5)} == {"b"}
    assert {await route_once(ring_only, key_of(second)) for _ in range(5)} == {"a"}  # the cache is on b
    assert await route_once(pool, key_of(first)) == "a"  # the unmoved conversation stays home
    await pool.aclose()
    await ring_only.aclose()


def test_a_placed_conversation_moves_only_above_the_move_factor() -> None:
    from types import SimpleNamespace

    from gateway.replicas.affinity import Placements, pick_bounded

    replicas = {n: SimpleNamespace(name=n, in_flight=0) for n in ("a", "b", "c")}
    placements = Placements(100)
    placements.served(key_of(1), "a")
    replicas["a"].in_flight = 2  # 2 of 2 in flight: above 1.25 x the mean, within 2 x
    pick = lambda move: pick_bounded(key_of(1), list(replicas.values()), lambda r: True, 1.25, placements, move).name
    assert pick(3.0) == "a"  # stays with its prompt cache
    placements.served(key_of(1), "a")
    assert pick(1.25) != "a"  # moved: its replica is over the bound
    assert placements.get(key_of(1)) != "a"  # and it is remembered where it went


@pytest.mark.parametrize("memory", [0, 16_384])
async def test_an_open_circuit_falls_through(models_server, memory: int) -> None:
    pool = await make_pool(
        models_server,
        {"a": [MODEL], "b": [MODEL]},
        **AFFINITY,
        breaker_failures=1,
        breaker_reset_s=0.3,
        affinity_memory=memory,
    )
    home = await route_once(pool, key_of(3))
    broken = {home}

    async def maybe_broken(backend: Backend) -> str:
        if backend.name in broken:
            raise BackendUnavailable(f"{backend.name} is down")
        return backend.name

    lease, name = await pool.open(MODEL, maybe_broken, affinity_key=key_of(3))  # fails over
    lease.done()
    assert name != home
    assert {await route_once(pool, key_of(3)) for _ in range(5)} == {name}  # home's circuit is open: skipped
    broken.clear()
    loop = asyncio.get_running_loop()
    if memory:  # the conversation's prompt is cached where it failed over to: it stays there
        await asyncio.sleep(0.4)  # past breaker_reset_s: home may be probed again
        assert {await route_once(pool, key_of(3)) for _ in range(5)} == {name}
        fresh = next(i for i in range(100, 300) if home_of(i, ["a", "b"]) == home)
        deadline = loop.time() + 5
        while await route_once(pool, key_of(fresh)) != home:  # new conversations go home again
            assert loop.time() < deadline, "home never took a conversation again"
            await asyncio.sleep(0.05)
    else:  # the ring alone: the key comes back home once the circuit closes
        deadline = loop.time() + 5
        while await route_once(pool, key_of(3)) != home:  # half-open probe succeeds, the circuit closes
            assert loop.time() < deadline, "the conversation never went home"
            await asyncio.sleep(0.05)
        assert {await route_once(pool, key_of(3)) for _ in range(5)} == {home}
    await pool.aclose()


async def test_models_missing_on_a_replica_or_everywhere(models_server) -> None:
    pool = await make_pool(models_server, {"a": [MODEL, "only-b-lacks"], "b": [MODEL]}, **AFFINITY)
    # every key, wherever its ring position, lands on the one replica serving the model
    assert {await route_once(pool, key_of(i), "only-b-lacks") for i in range(50)} == {"a"}
    with pytest.raises(ModelNotFound):
        await pool.resolve("no-such-model")
    with pytest.raises(NoHealthyBackend):
        await route_once(pool, key_of(1), "no-such-model")
    # no key (embeddings, batched prompts): least in flight
    assert Counter([await route_once(pool, None) for _ in range(6)]) == {"a": 3, "b": 3}
    await pool.aclose()


@pytest.mark.parametrize("memory", [0, 2_000])
async def test_memory_stays_bounded_however_many_conversations(models_server, memory: int) -> None:
    pool = await make_pool(
        models_server, {"a": [MODEL], "b": [MODEL], "c": [MODEL]}, **AFFINITY, affinity_memory=memory
    )
    for i in range(200):  # warm up: rings, metric series, interpreter caches
        await route_once(pool, key_of(i))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(10_000):
        await route_once(pool, i.to_bytes(8, "big"))
    filled = tracemalloc.get_traced_memory()[0]
    for i in range(10_000, 30_000):
        await route_once(pool, i.to_bytes(8, "big"))
    grown = tracemalloc.get_traced_memory()[0] - filled
    tracemalloc.stop()
    assert filled - before < 64 * 1024 + memory * 300, f"{filled - before} bytes for {memory} remembered"
    assert grown < 64 * 1024, f"{grown} more bytes kept after 20 000 more conversations"
    await pool.aclose()
