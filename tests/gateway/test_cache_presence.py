"""The cache-key index against a real redis-server: in step after a scan, told of keys other clients
write, emptied by a flush, standing down (every read goes to Redis) while it is out of step."""

from __future__ import annotations

import logging

import pytest
import redis.asyncio as aioredis

from gateway.cache_presence import CachePresence, KeyGenerations
from gateway.redis_wire import RedisWire
from tests.support.processes import Service, redis_service, until


@pytest.fixture
async def other(redis_server: Service):
    """Another process's connection: the writes the index must hear of."""
    client = aioredis.Redis(port=redis_server.port)
    await client.flushall()
    yield client
    await client.aclose()


def index_for(service: Service, **kw) -> CachePresence:  # noqa: ANN003
    return CachePresence(RedisWire(f"redis://127.0.0.1:{service.port}/0", connect_timeout_s=1.0),
                         ttl_s=kw.pop("ttl_s", 60), retry_s=0.05, **kw)


async def test_keys_stored_before_and_after_start_are_known_and_others_are_certain_misses(redis_server, other):
    await other.set("gw:cache:chat:before", b"x", ex=60)
    index = index_for(redis_server)
    assert index.may_hold("gw:cache:chat:unknown"), "out of step: every key may be there"
    index.start()
    await until(lambda: index.ready)
    assert index.may_hold("gw:cache:chat:before")
    assert not index.may_hold("gw:cache:chat:unknown")
    await other.set("gw:cache:chat:after", b"y", ex=60)
    await other.set("elsewhere:chat:after", b"y")  # outside the prefix: not tracked
    await until(lambda: index.may_hold("gw:cache:chat:after"))
    assert not index.may_hold("elsewhere:chat:after")
    await index.aclose()
    await index.wire.aclose()


async def test_a_flush_empties_the_index(redis_server, other):
    index = index_for(redis_server)
    index.start()
    await until(lambda: index.ready)
    await other.set("gw:cache:chat:a", b"x")
    await until(lambda: index.may_hold("gw:cache:chat:a"))
    await other.flushall()
    await until(lambda: not index.may_hold("gw:cache:chat:a"))
    assert index.ready
    await index.aclose()
    await index.wire.aclose()


async def test_entries_lapse_after_the_ttl(redis_server, other):
    index = index_for(redis_server, ttl_s=0.1)  # an entry lives for the TTL plus a second of margin
    index.start()
    await until(lambda: index.ready)
    await other.set("gw:cache:chat:short", b"x", px=100)
    await until(lambda: index.may_hold("gw:cache:chat:short"))
    await until(lambda: not index.may_hold("gw:cache:chat:short"), timeout=5)
    await index.aclose()
    await index.wire.aclose()


async def test_out_of_step_while_redis_is_gone_then_in_step_again():
    service = redis_service().start().wait_port()
    states: list[tuple[bool, int]] = []
    index = index_for(service, on_state=lambda ready, keys: states.append((ready, keys)))
    try:
        index.start()
        await until(lambda: index.ready)
        port = service.port
        service.kill()
        await until(lambda: not index.ready)
        assert index.may_hold("gw:cache:chat:anything"), "no Redis to ask: never claim a miss"
        service = redis_service(port=port).start().wait_port()
        client = aioredis.Redis(port=port)
        await client.set("gw:cache:chat:while-away", b"x")  # stored before the index is back: the scan finds it
        await until(lambda: index.ready, timeout=10)
        assert index.may_hold("gw:cache:chat:while-away") and not index.may_hold("gw:cache:chat:other")
        transitions = [ready for i, (ready, _) in enumerate(states) if i == 0 or states[i - 1][0] != ready]
        assert transitions == [True, False, True], "the metrics hear of each change of state"
        await client.aclose()
    finally:
        await index.aclose()
        await index.wire.aclose()
        service.stop()


async def test_a_redis_without_key_tracking_turns_the_index_off(caplog):
    """Redis 5 has no CLIENT TRACKING; an ACL can forbid it. Here the ACL does: asked once, not again."""
    service = redis_service(extra=["--user", "gateway", "on", ">s3cret", "~*", "&*", "+@all", "-client|tracking",
                                   "--user", "default", "off"]).start().wait_port()
    wire = RedisWire(f"redis://gateway:s3cret@127.0.0.1:{service.port}/0", connect_timeout_s=1.0)
    index = CachePresence(wire, ttl_s=60, retry_s=0.05)
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.cache"):
            index.start()
            await until(lambda: index._task is not None and index._task.done())
        assert not index.ready and index.may_hold("gw:cache:chat:x")
        assert "refused key tracking" in caplog.text
    finally:
        await index.aclose()
        await wire.aclose()
        service.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_keys_are_found_for_the_ttl_and_no_more_than_a_third_longer() -> None:
    clock = Clock()
    keys = KeyGenerations(ttl_s=59.0, clock=clock)  # a span of (59 + 1) / 3 = 20 s per generation
    keys.add("gw:cache:chat:a")
    clock.now += 60.0  # the TTL and the second of margin
    assert "gw:cache:chat:a" in keys
    keys.add("gw:cache:chat:b")
    clock.now += 20.0  # a's generation is the fifth now: dropped
    assert "gw:cache:chat:a" not in keys and "gw:cache:chat:b" in keys


def test_many_keys_no_false_negative_and_few_false_positives() -> None:
    keys = KeyGenerations(ttl_s=3600.0, min_bits=1 << 18, clock=Clock())  # ~13 bits for each of 20k keys
    stored = [f"gw:cache:chat:{i:040x}" for i in range(20_000)]
    for key in stored:
        keys.add(key)
    assert all(key in keys for key in stored)
    false_positives = sum(f"gw:cache:chat:other-{i}" in keys for i in range(20_000)) / 20_000
    assert false_positives < 0.03


def test_each_new_generation_is_sized_from_the_busiest_one() -> None:
    clock = Clock()
    keys = KeyGenerations(ttl_s=3600.0, bits_per_key=10, min_bits=1 << 16, clock=clock)
    for i in range(20_000):  # three bits a key in the smallest filter: it reads Redis often, no more
        keys.add(f"gw:cache:chat:{i}")
    clock.now += keys.span
    keys.add("gw:cache:chat:next")
    assert keys._filters[0][1] + 1 >= 20_000 * 10
    assert all(f"gw:cache:chat:{i}" in keys for i in range(20_000)), "the older generation still answers"
