"""RPM, TPM and monthly budget against a real redis-server, shared by two independent clients."""

from __future__ import annotations

import asyncio

import pytest

from gateway.access.calendar import utc_date
from gateway.access.limits import (
    AnonymousLimiter,
    KeyLimits,
    KeyRateLimiter,
    RateLimited,
    estimate_tokens,
    seconds_to_next_month,
)
from gateway.state.redis import RedisState
from gateway.state.write_behind import WriteBehind
from testkit.processes import redis_service

NOW = 1_800_000_010.0  # ten seconds into a minute: every test stays inside one window


async def reserved(limiter: KeyRateLimiter, *args, **kwargs):
    """The reservation alone (no cache read rides along in these tests)."""
    reservation, _ = await limiter.reserve(*args, **kwargs)
    return reservation


@pytest.fixture
async def replicas(redis_server):
    """Two limiters with their own connections: what two gateway processes look like to Redis."""
    # A generous timeout: these tests are about shared counting, not about a slow Redis (test_redis_down.py).
    states = [RedisState.from_url(f"redis://127.0.0.1:{redis_server.port}/0", timeout_s=2.0) for _ in range(2)]
    await states[0].client.flushdb()
    yield [KeyRateLimiter(s) for s in states]
    for s in states:
        await s.close()


async def test_rpm_is_one_limit_across_replicas(replicas):
    limits = KeyLimits(rpm=10)
    results = await asyncio.gather(
        *[reserved(replicas[i % 2], "key_a", limits, 1, now=NOW) for i in range(25)], return_exceptions=True
    )
    granted = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, RateLimited)]
    assert len(granted) == 10 and len(refused) == 15
    assert refused[0].kind == "rpm" and refused[0].headers["Retry-After"] == "50"
    assert refused[0].headers["X-RateLimit-Remaining"] == "0"
    # Another key has its own window.
    assert await reserved(replicas[0], "key_b", limits, 1, now=NOW) is not None
    # The next minute starts fresh.
    assert await reserved(replicas[1], "key_a", limits, 1, now=NOW + 60) is not None


async def test_tpm_reserve_and_reconcile(replicas):
    limits = KeyLimits(tpm=1000)
    first = await reserved(replicas[0], "key_t", limits, 600, now=NOW)
    assert first.headers(now=NOW)["X-RateLimit-Remaining-Tokens"] == "400"
    with pytest.raises(RateLimited) as refused:
        await reserved(replicas[1], "key_t", limits, 600, now=NOW)
    assert refused.value.kind == "tpm" and refused.value.headers["X-RateLimit-Limit-Tokens"] == "1000"
    replicas[0].reconcile(first, 100)  # the call used far less than estimated: give back 500
    await WriteBehind(replicas[0].redis, [replicas[0]]).flush()
    second = await reserved(replicas[1], "key_t", limits, 600, now=NOW)
    assert second.tpm_used == 700


async def test_monthly_budget_exhaustion(replicas):
    limits = KeyLimits(monthly_token_budget=1000)
    reservation = await reserved(replicas[0], "key_m", limits, 400, now=NOW)
    replicas[0].reconcile(reservation, 900)
    await WriteBehind(replicas[0].redis, [replicas[0]]).flush()
    with pytest.raises(RateLimited) as refused:
        await reserved(replicas[1], "key_m", limits, 200, now=NOW + 3600)  # another minute, same month
    assert refused.value.kind == "budget"
    assert int(refused.value.headers["Retry-After"]) == seconds_to_next_month(NOW + 3600)


async def test_no_limits_means_no_redis_work(replicas):
    assert await reserved(replicas[0], "key_free", KeyLimits(), 10**9, now=NOW) is None


async def test_local_fallback_when_redis_is_down():
    svc = redis_service().start().wait_port()
    state = RedisState.from_url(f"redis://127.0.0.1:{svc.port}/0", retry_after_s=30)
    limiter = KeyRateLimiter(state)
    try:
        await reserved(limiter, "key_l", KeyLimits(rpm=3), 1, now=NOW)
        svc.kill()
        got = [await reserved(limiter, "key_l", KeyLimits(rpm=3), 1, now=NOW) for _ in range(3)]
        assert all(r.local for r in got)
        with pytest.raises(RateLimited):
            await reserved(limiter, "key_l", KeyLimits(rpm=3), 1, now=NOW)
    finally:
        svc.stop()
        await state.close()


async def test_anonymous_limiter_per_address():
    limiter = AnonymousLimiter(per_minute=2)
    await limiter.check("10.0.0.1")
    await limiter.check("10.0.0.1")
    await limiter.check("10.0.0.2")
    with pytest.raises(RateLimited) as refused:
        await limiter.check("10.0.0.1")
    assert 1 <= int(refused.value.headers["Retry-After"]) <= 60


def test_estimate_counts_prompt_and_output_cap():
    assert estimate_tokens(400, 50, 512) == 150
    assert estimate_tokens(401, None, 512) == 101 + 512


async def test_cache_read_rides_on_the_reservation(replicas):
    client = replicas[0].redis.client
    await client.set("gw:cache:chat:abc", b'{"cached": true}')
    reservation, got = await replicas[0].reserve("key_c", KeyLimits(rpm=2), 1, "gw:cache:chat:abc", now=NOW)
    assert reservation.rpm_used == 1 and got == b'{"cached": true}'
    _, missing = await replicas[0].reserve("key_c", KeyLimits(rpm=2), 1, "gw:cache:chat:nope", now=NOW)
    assert missing is None
    with pytest.raises(RateLimited):
        await replicas[0].reserve("key_c", KeyLimits(rpm=2), 1, "gw:cache:chat:abc", now=NOW)


async def test_reconcile_on_an_expired_window_leaves_no_immortal_key(replicas):
    reservation = await reserved(replicas[0], "key_e", KeyLimits(tpm=100), 50, now=NOW)
    client = replicas[0].redis.client
    tpm_key = f"gw:rl:t:key_e:{int(NOW // 60)}"
    await client.delete(tpm_key)  # the window expired before the answer finished
    replicas[0].reconcile(reservation, 10)
    await WriteBehind(replicas[0].redis, [replicas[0]]).flush()
    assert 0 < await client.ttl(tpm_key) <= 120


async def test_anonymous_limit_is_shared_through_redis(replicas):
    first, second = (AnonymousLimiter(per_minute=3, redis=r.redis) for r in replicas)
    await first.check("10.1.1.1")
    await second.check("10.1.1.1")
    await first.check("10.1.1.1")
    with pytest.raises(RateLimited) as refused:
        await second.check("10.1.1.1")
    assert refused.value.headers["X-RateLimit-Limit"] == "3"
    await second.check("10.1.1.2")


def test_utc_date_strings_follow_the_calendar_across_cached_days() -> None:
    from datetime import UTC, datetime

    # last second of January, first of February, and back: the per-day cache must not stick
    for moment in (
        "2026-01-31T23:59:59",
        "2026-02-01T00:00:00",
        "2026-01-31T12:00:00",
        "2026-12-31T23:59:59",
        "2027-01-01T00:00:01",
    ):
        ts = datetime.fromisoformat(moment).replace(tzinfo=UTC).timestamp()
        assert utc_date("%Y-%m", ts) == moment[:7]
        assert utc_date("%Y-%m-%d", ts) == moment[:10]


async def test_concurrent_bursts_on_two_replicas_never_pass_the_limit(replicas):
    limits = KeyLimits(rpm=200)
    key = f"gw:rl:r:key_lc:{int(NOW // 60)}"
    results = []
    for _ in range(6):  # bursts of concurrent requests on both replicas, 300 in all
        results += await asyncio.gather(
            *[reserved(replicas[i % 2], "key_lc", limits, 1, now=NOW) for i in range(50)], return_exceptions=True
        )
    granted = [r for r in results if not isinstance(r, Exception)]
    assert all(isinstance(r, RateLimited) for r in results if isinstance(r, Exception))
    assert len(granted) == 200 == int(await replicas[0].redis.client.get(key))
    assert sorted(r.rpm_used for r in granted) == list(range(1, 201)), "each grant saw its own count"
