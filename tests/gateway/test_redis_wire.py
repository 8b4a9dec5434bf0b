"""The multiplexed Redis connection, against real redis-servers (frozen, killed, restarted, with a password)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from gateway.limits import RESERVE_LUA
from gateway.redis_wire import Batch, RedisWire, pack
from tests.support.processes import Service, free_port, redis_service


def wire_for(service: Service, **kw: object) -> RedisWire:
    return RedisWire(f"redis://127.0.0.1:{service.port}/0", connect_timeout_s=1.0, **kw)  # type: ignore[arg-type]


def test_pack_is_resp() -> None:
    assert pack(("SET", b"k", 5)) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n5\r\n"


async def test_concurrent_callers_share_one_connection_and_get_their_own_replies(redis_server: Service) -> None:
    wire = wire_for(redis_server)
    await wire.call("DEL", "wire:n")
    replies = await asyncio.gather(*(wire.call("INCR", "wire:n") for _ in range(200)))
    assert sorted(replies) == list(range(1, 201))
    assert await wire.call("GET", "wire:n") == b"200"
    await wire.aclose()


async def test_a_batch_is_written_at_once_and_answered_in_order(redis_server: Service) -> None:
    wire = wire_for(redis_server)
    await wire.call("DEL", "wire:b:n", "wire:b:h", "wire:b:s")
    batch = Batch()
    batch.incrby("wire:b:n", 5)
    batch.expire("wire:b:n", 120, nx=True)
    batch.expire("wire:b:n", 60, nx=True)  # NX: the first expiry stays
    batch.hincrby("wire:b:h", "tokens", 7)
    batch.set("wire:b:s", b"answer", ex=30)
    assert await wire.pipeline(batch.commands) == [5, 1, 0, 7, b"OK"]
    assert 60 < await wire.call("TTL", "wire:b:n") <= 120 and 0 < await wire.call("TTL", "wire:b:s") <= 30
    assert await wire.call("HGET", "wire:b:h", "tokens") == b"7"
    await wire.aclose()


async def test_a_refused_command_in_a_batch_raises_after_every_reply_and_keeps_the_order(redis_server: Service) -> None:
    wire = wire_for(redis_server)
    await wire.call("SET", "wire:b:str", "text")
    batch = Batch()
    batch.incrby("wire:b:str", 1)  # WRONGTYPE... not an integer
    batch.incrby("wire:b:ok", 1)
    with pytest.raises(ResponseError, match="not an integer"):
        await wire.pipeline(batch.commands)
    assert await wire.call("PING") == b"PONG"  # the next reply is still the next caller's
    await wire.aclose()


async def test_a_script_error_is_a_response_error(redis_server: Service) -> None:
    wire = wire_for(redis_server)
    with pytest.raises(ResponseError):
        await wire.call("EVAL", "return redis.call('INCR', KEYS[1], 'extra')", 1, "wire:bad")
    assert await wire.call("PING") == b"PONG", "the connection is still in step after an error reply"
    await wire.aclose()


async def test_evalsha_survives_a_flushed_script_cache(redis_server: Service) -> None:
    wire = wire_for(redis_server)
    sha = wire.register_script(RESERVE_LUA)
    keys = ("wire:r", "wire:t", "wire:b")
    args = (10, 0, 0, 5, 120, 3600)
    first = await wire.evalsha(sha, keys, args)
    await wire.call("SCRIPT", "FLUSH")  # what a Redis restart does to the script cache
    second = await wire.evalsha(sha, keys, args)
    assert first[0] == second[0] == 0 and second[1] == first[1] + 1
    await wire.aclose()


async def test_password_and_database_from_the_url() -> None:
    service = redis_service(extra=["--requirepass", "s3cret"]).start().wait_port()
    try:
        wire = RedisWire(f"redis://:s3cret@127.0.0.1:{service.port}/3", connect_timeout_s=1.0)
        await wire.call("SET", "wire:db", "x")
        assert await wire.call("GET", "wire:db") == b"x"
        await wire.aclose()
        wrong = RedisWire(f"redis://:nope@127.0.0.1:{service.port}/0", connect_timeout_s=1.0)
        with pytest.raises(ResponseError):
            await wrong.call("PING")
        await wrong.aclose()
    finally:
        service.stop()


async def test_a_caller_that_gave_up_does_not_shift_the_replies() -> None:
    """Redis frozen (SIGSTOP) while a caller waits: it gives up; once Redis runs again, its late reply
    comes first on the connection and must not reach the next caller."""
    service = redis_service().start().wait_port()
    wire = wire_for(service)
    try:
        assert await wire.call("PING") == b"PONG"  # connected before Redis stops
        os.kill(service.proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await wire.call("ECHO", "late")
        finally:
            os.kill(service.proc.pid, signal.SIGCONT)
        assert await wire.call("ECHO", "mine") == b"mine"
        assert await wire.call("ECHO", "next") == b"next"
    finally:
        await wire.aclose()
        service.stop()


async def test_a_dead_redis_fails_the_waiters_and_the_next_call_reconnects() -> None:
    service = redis_service().start().wait_port()
    wire = wire_for(service)
    assert await wire.call("PING") == b"PONG"
    service.kill()
    with pytest.raises(RedisConnectionError):
        await wire.call("PING")
    restarted = redis_service(service.port).start().wait_port()
    try:
        assert await wire.call("PING") == b"PONG"
    finally:
        await wire.aclose()
        restarted.stop()


async def test_nothing_listening_is_a_connection_error() -> None:
    wire = RedisWire(f"redis://127.0.0.1:{free_port()}", connect_timeout_s=1.0)
    with pytest.raises(RedisConnectionError):
        await wire.call("PING")


def test_only_plain_redis_urls() -> None:
    assert RedisWire.supports("redis://h:1/0") and not RedisWire.supports("rediss://h:1/0")
    assert not RedisWire.supports("unix:///tmp/redis.sock") and not RedisWire.supports(None)
