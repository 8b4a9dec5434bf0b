"""The cache-key index against a real redis-server: in step after a scan, told of keys other clients
write, emptied by a flush, standing down (every read goes to Redis) while it is out of step."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis.asyncio as aioredis

from gateway.cache_presence import CachePresence
from gateway.redis_wire import RedisWire
from tests.support.processes import Service, redis_service


async def until(condition, timeout: float = 5.0) -> None:  # noqa: ANN001
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


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


async def test_past_its_bound_the_index_stands_down(redis_server, other, caplog):
    index = index_for(redis_server, max_keys=5)
    index.max_retry_s = 30.0  # after an overflow it waits this long before building itself again
    index.start()
    await until(lambda: index.ready)
    with caplog.at_level(logging.WARNING, logger="gateway.cache"):
        await other.mset({f"gw:cache:chat:{i}": b"x" for i in range(8)})
        await until(lambda: not index.ready)
    assert index.may_hold("gw:cache:chat:never-stored"), "standing down: every read goes to Redis"
    assert "standing down" in caplog.text
    await index.aclose()
    await index.wire.aclose()
