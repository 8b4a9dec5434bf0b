"""Console sessions, in a real redis-server and in process memory: what a session id stands for, how long,
and that closing one ends it at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.access.sessions import MAX_SKIPPED, SessionStore
from gateway.state.redis import RedisState
from testkit.processes import Service


@pytest.fixture(params=["redis", "memory"])
async def state(request: pytest.FixtureRequest, redis_server: Service) -> AsyncIterator[RedisState]:
    if request.param == "memory":
        yield RedisState(None)
        return
    redis = RedisState.from_url(f"redis://127.0.0.1:{redis_server.port}/0", retry_after_s=0.0)
    await redis.client.flushdb()
    try:
        yield redis
    finally:
        await redis.close()


async def test_a_session_holds_its_key_and_skips_until_closed(state: RedisState) -> None:
    store = SessionStore(state, lifetime_s=60)
    session_id, opened = await store.open("key_1", admin_digest=None)
    other_id, _ = await store.open("key_2")
    assert session_id != other_id and opened.csrf and opened.csrf not in (session_id, other_id)
    for request_id in ("req-a", "req-b", "req-a"):
        opened.skip(request_id)
    await store.save(session_id, opened)
    got = await store.get(session_id)
    assert got is not None and got.key_id == "key_1" and got.csrf == opened.csrf
    assert got.skipped == ["req-a", "req-b"]
    await store.close(session_id)
    assert await store.get(session_id) is None
    kept = await store.get(other_id)
    assert kept is not None and kept.key_id == "key_2"
    assert await store.get("a-made-up-id") is None


async def test_a_session_ends_with_its_lifetime(state: RedisState) -> None:
    store = SessionStore(state, lifetime_s=1)
    session_id, _ = await store.open("key_1")
    assert await store.get(session_id) is not None
    await asyncio.sleep(1.2)  # the lifetime itself is what is under test
    assert await store.get(session_id) is None
    later_id, _ = await store.open("key_2")  # saving after an expiry keeps working
    assert await store.get(later_id) is not None


async def test_a_session_remembers_only_its_latest_skips(state: RedisState) -> None:
    store = SessionStore(state, lifetime_s=60)
    session_id, session = await store.open("key_1")
    for i in range(MAX_SKIPPED + 5):
        session.skip(f"req-{i}")
    await store.save(session_id, session)
    got = await store.get(session_id)
    assert got is not None and len(got.skipped) == MAX_SKIPPED
    assert got.skipped[0] == "req-5" and got.skipped[-1] == f"req-{MAX_SKIPPED + 4}"
