"""Which response-cache keys Redis may hold, known without asking it (Redis's broadcast key tracking).

A cacheable request starts with a read of its cache key. When its prompt is new (most of them) that
round trip finds nothing and only delays the answer. Redis can instead tell every gateway process
each time a key under the cache's prefix changes: `CLIENT TRACKING ON BCAST PREFIX gw:cache:`, the
invalidation messages of Redis's client-side caching, here on this process's own subscriber
connection. Each process keeps the keys it heard of within the cache's lifetime; a key it has not
heard of is a certain miss, and its read is skipped.

It never hides a hit that matters: the index answers "absent" only while it is in step (tracking on,
the subscription confirmed, and the keys that existed before scanned in). Before that, and from a
lost connection until it is in step again, every read goes to Redis as before. A message says a key
changed, not how (written, expired, deleted): either way the key counts as present for the cache's
TTL, which costs at most a read that misses. Replicas must share the TTL (GATEWAY_CACHE_TTL_S; the
compose stack gives them one .env): an answer stored for longer elsewhere would be read there only.
Keys are kept in Bloom filters (`KeyGenerations`): a false positive only costs a read, and the memory
stays a few bytes per key however many answers are stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from gateway.redis_wire import RedisWire, _Connection, pack

log = logging.getLogger("gateway.cache")

CHANNEL = b"__redis__:invalidate"


class TrackingRefused(Exception):
    """Redis answered CLIENT TRACKING with an error: it cannot do what the index needs."""


class _Subscriber(_Connection):
    """The tracking connection: `RedisWire`'s connection, with invalidation messages taken out of the
    replies (they come whenever a key changes, between the replies to its own commands)."""

    def __init__(self, on_keys: Callable[[list[bytes]], None], on_flush: Callable[[], None]) -> None:
        super().__init__()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.on_keys, self.on_flush = on_keys, on_flush

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if type(reply) is list and len(reply) == 3 and reply[0] == b"message" and reply[1] == CHANNEL:
                if reply[2] is None:  # FLUSHALL / FLUSHDB: every key is gone
                    self.on_flush()
                else:
                    self.on_keys(reply[2])
            elif not self.answer(reply):
                return

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.lost.done():
            self.lost.set_result(None)

    def command(self, *args: bytes | str | int) -> asyncio.Future[object]:
        return self.send(pack(args))


class KeyGenerations:
    """Keys heard of within the TTL, as Bloom filters by generation: the newest takes the keys, and one is
    dropped each `span` = (ttl + 1 s) / (GENERATIONS - 1), so a key is found for at least the TTL (plus a
    second for the message's way) and at most a third longer. Each new filter is sized from the busiest
    recent generation at `bits_per_key` (~1.5 % false positives at 10 bits and 3 probes); a generation
    that fills past that just reads Redis more often. A false negative cannot happen: nothing is removed
    but whole generations older than the TTL."""

    GENERATIONS = 4

    def __init__(self, ttl_s: float, *, bits_per_key: int = 10, min_bits: int = 1 << 16, max_bits: int = 1 << 27,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.span = (ttl_s + 1.0) / (self.GENERATIONS - 1)
        self.bits_per_key, self.min_bits, self.max_bits = bits_per_key, min_bits, max_bits
        self.clock = clock
        self.clear()

    def clear(self) -> None:
        self._filters: list[tuple[bytearray, int]] = []  # (bits, mask), newest first
        self._counts: list[int] = []
        self._rotate_at = self.clock() + self.span
        self._push()

    def _push(self) -> None:
        wanted = max(self._counts, default=0) * self.bits_per_key
        size = self.min_bits
        while size < wanted and size < self.max_bits:
            size <<= 1
        self._filters.insert(0, (bytearray(size >> 3), size - 1))
        self._counts.insert(0, 0)
        del self._filters[self.GENERATIONS:], self._counts[self.GENERATIONS:]

    def _turn(self) -> None:
        now = self.clock()
        while now >= self._rotate_at:
            self._push()
            self._rotate_at += self.span

    # A key's three bit positions: a, a + b, a + 2b (double hashing from its one 64-bit hash), written out
    # in `add` and `__contains__` alike: the lookup runs on every cacheable request.
    def add(self, key: str) -> None:
        if self.clock() >= self._rotate_at:
            self._turn()
        h = hash(key)
        a, b = h & 0xFFFFFFFF, ((h >> 32) & 0xFFFFFFFF) | 1
        bits, mask = self._filters[0]
        for p in (a & mask, (a + b) & mask, (a + 2 * b) & mask):
            bits[p >> 3] |= 1 << (p & 7)
        self._counts[0] += 1

    def __contains__(self, key: str) -> bool:
        if self.clock() >= self._rotate_at:
            self._turn()
        h = hash(key)
        a, b = h & 0xFFFFFFFF, ((h >> 32) & 0xFFFFFFFF) | 1
        for bits, mask in self._filters:  # the three positions of `add`, tested one by one: most keys fail the first
            p = a & mask
            if not bits[p >> 3] & (1 << (p & 7)):
                continue
            p = (a + b) & mask
            if not bits[p >> 3] & (1 << (p & 7)):
                continue
            p = (a + 2 * b) & mask
            if bits[p >> 3] & (1 << (p & 7)):
                return True
        return False

    @property
    def keys_heard(self) -> int:
        """Keys added across the live generations (a key heard twice counts twice)."""
        return sum(self._counts)


class CachePresence:
    """The cache keys any gateway process stored within the TTL, as heard from Redis; see the module doc."""

    def __init__(self, wire: RedisWire, *, ttl_s: float, prefix: str = "gw:cache:", retry_s: float = 1.0,
                 max_retry_s: float = 30.0, on_state: Callable[[bool, int], None] | None = None) -> None:
        self.wire = wire
        self.ttl_s = ttl_s
        self.prefix = prefix
        self.retry_s, self.max_retry_s = retry_s, max_retry_s
        self.ready = False
        self.keys = KeyGenerations(ttl_s)
        self._conn: _Subscriber | None = None
        self._task: asyncio.Task[None] | None = None
        self._on_state = on_state

    # -- the request path ----------------------------------------------------------------------------
    def may_hold(self, key: str) -> bool:
        """False only for a key no process stored within the TTL, while the index is in step."""
        return not self.ready or key in self.keys

    # -- fed by the subscriber -----------------------------------------------------------------------
    def _heard(self, keys: list[bytes]) -> None:
        add = self.keys.add
        for key in keys:
            add(key.decode("utf-8", "replace"))

    def _flushed(self) -> None:
        self.keys.clear()

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._stand_down()

    def _stand_down(self) -> None:
        was = self.ready
        self.ready = False
        self.keys.clear()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if was:
            self._report()

    def _report(self) -> None:
        if self._on_state is not None:
            self._on_state(self.ready, self.keys.keys_heard)

    async def _run(self) -> None:
        delay = self.retry_s
        while True:
            try:
                await self._follow()
                delay = self.retry_s  # it was in step: a later loss starts the back-off over
            except asyncio.CancelledError:
                raise
            except TrackingRefused as exc:
                log.warning("Redis refused key tracking (%s): the cache index is off, every cacheable request "
                            "reads Redis (set GATEWAY_CACHE_INDEX=false to skip this attempt)", exc)
                self._stand_down()
                return
            except Exception as exc:  # noqa: BLE001 - any failure: reads go to Redis until it is back
                log.info("cache index not in step (%s); cacheable requests read Redis meanwhile", exc)
            self._stand_down()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_retry_s)

    async def _follow(self) -> None:
        """Connect, turn tracking on, scan the keys already there, then follow the messages until the
        connection is lost."""
        wire = self.wire
        async with asyncio.timeout(wire.connect_timeout_s * 4):
            conn = self._conn = await wire.connect(lambda: _Subscriber(self._heard, self._flushed))
            own_id = await conn.command("CLIENT", "ID")
            try:
                await conn.command("CLIENT", "TRACKING", "ON", "REDIRECT", own_id, "BCAST", "PREFIX", self.prefix)
            except ResponseError as exc:  # Redis before 6, or an ACL without CLIENT: asking again will not help
                raise TrackingRefused(str(exc)) from None
            await conn.command("SUBSCRIBE", CHANNEL)
        await self._scan()
        if conn.lost.done():
            raise RedisConnectionError("tracking connection lost during the scan")
        self.ready = True
        self._report()
        log.info("cache index in step: %d keys", self.keys.keys_heard)
        while not conn.lost.done():
            await asyncio.wait([conn.lost], timeout=min(60.0, self.ttl_s / 4))
            self._report()
        raise RedisConnectionError("tracking connection lost")

    async def _scan(self) -> None:
        """The keys stored before tracking began (those after arrive as messages); this connection's
        database only, as `RedisWire` reads and writes it."""
        cursor: bytes | int = 0
        pattern = self.prefix + "*"
        while True:
            async with asyncio.timeout(self.wire.connect_timeout_s * 4):
                reply = await self.wire.call("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
            cursor, keys = reply  # type: ignore[misc]
            if keys:
                self._heard(keys)
            if cursor in (b"0", 0):
                return
