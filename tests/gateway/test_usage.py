"""Usage counting in Redis (and buffered through an outage) and the cost arithmetic."""

from __future__ import annotations

import asyncio
from datetime import date

import pytest
from redis.exceptions import RedisError

from gateway.access.cost import ModelPrice, PriceTable
from gateway.access.usage import UsageRow, UsageStore
from gateway.state.redis import RedisState
from gateway.state.write_behind import WriteBehind
from testkit.processes import redis_service

D1, D2 = date(2026, 11, 21), date(2026, 11, 22)


def durable_redis(tmp_path, port=None):
    """AOF on, fsync every write: a SIGKILLed Redis comes back with the counts (as in compose)."""
    extra = ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp_path)]
    return redis_service(port, extra=extra).start().wait_port()


async def loaded(state: RedisState, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            try:
                await state.client.ping()
                return
            except RedisError:  # LOADING (redis-py's BusyLoadingError) or not accepting yet
                await asyncio.sleep(0.02)


async def test_usage_per_key_model_day_in_redis_and_through_an_outage(tmp_path):
    svc = durable_redis(tmp_path)
    state = RedisState.from_url(f"redis://127.0.0.1:{svc.port}/0", retry_after_s=0.0)
    store = UsageStore(state)
    try:
        store.record("key_a", "tiny", 10, 5, day=D1.isoformat())
        store.record("key_a", "tiny", 7, 3, day=D1.isoformat())
        store.record("key_a", "other", 1, 1, day=D2.isoformat())
        store.record("key_b", "tiny", 100, 100, day=D2.isoformat())
        await WriteBehind(state, [store]).flush()
        assert await store.query("key_a", D1, D2) == [
            UsageRow("2026-11-21", "tiny", 2, 17, 8),
            UsageRow("2026-11-22", "other", 1, 1, 1),
        ]
        port = svc.port
        svc.kill()
        store.record("key_a", "tiny", 4, 4, day=D1.isoformat())
        await WriteBehind(state, [store]).flush()  # fails: buffered, not lost
        svc = durable_redis(tmp_path, port)
        await loaded(state)  # a restarted Redis answers LOADING until its AOF is read back
        await WriteBehind(state, [store]).flush()
        assert (await store.query("key_a", D1, D1))[0] == UsageRow("2026-11-21", "tiny", 3, 21, 12)
        assert await state.client.ttl(f"gw:usage:key_a:{D1.isoformat()}") > 0
    finally:
        svc.stop()
        await state.close()


async def test_memory_usage_and_range_checks():
    store = UsageStore(RedisState(None))
    store.record("k", "m", 2, 3, day=D1.isoformat())
    assert await store.query("k", D1, D2) == [UsageRow("2026-11-21", "m", 1, 2, 3)]
    with pytest.raises(ValueError):
        await store.query("k", D2, D1)
    with pytest.raises(ValueError):
        await store.query("k", date(2020, 1, 1), D2)


def test_cost_and_break_even():
    table = PriceTable(
        models={"tiny": ModelPrice(input_per_million=1.0, output_per_million=4.0)}, gpu_monthly_usd=300.0
    )
    cost = table.hosted_cost("tiny", 1_000_000, 500_000)
    assert cost == pytest.approx(3.0)
    assert table.hosted_cost("unknown", 1_000_000, 0) == pytest.approx(0.15)
    even = table.break_even(cost, 1000)
    assert even["api_cost_per_query_usd"] == pytest.approx(0.003)
    assert even["break_even_queries_per_month"] == pytest.approx(100_000)
    assert table.break_even(0.0, 0)["break_even_queries_per_month"] is None
