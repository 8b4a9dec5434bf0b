"""One multiplexed Redis connection for the call every request makes (the limits + cache-read script).

Callers write their command and wait for their reply; Redis answers in order, so replies are
matched to a FIFO of waiters and many requests share one connection with no pool, no lock and no
per-call task. A caller cut off
by its deadline leaves a cancelled waiter behind, and its late reply is skipped: the order never
slips. Replies are parsed by hiredis (C).

Why next to redis-py (which serves every other call): redis-py spends ~50 us of Python per call
on its pool, connection checks and command plumbing; this is the gateway's one per-request Redis
call, and the difference is a tenth of the gateway's CPU per request (bench/reports/2026-11-22/).
Errors surface as redis-py's exception types, so `RedisState.run` treats both clients alike.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import unquote, urlsplit

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

Arg = bytes | str | int


def pack(args: tuple[Arg, ...]) -> bytes:
    """RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        self.waiters: deque[asyncio.Future[object]] = deque()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if not self.answer(reply):
                return

    def answer(self, reply: object) -> bool:
        """Hand `reply` to the oldest waiter; False (and the connection closed) if nobody asked for one."""
        if not self.waiters:  # a reply nobody asked for: the stream is out of step, start over
            self.close(RedisConnectionError("unexpected reply from redis"))
            return False
        waiter = self.waiters.popleft()
        if waiter.done():  # its caller gave up (deadline): the reply is skipped, the order kept
            return True
        if isinstance(reply, hiredis.ReplyError):
            waiter.set_exception(ResponseError(str(reply)))
        else:
            waiter.set_result(reply)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"connection to redis lost: {exc!r}" if exc else "redis closed the connection"))

    def _fail(self, error: Exception) -> None:
        self.closed = True
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)

    def close(self, error: Exception | None = None) -> None:
        self._fail(error or RedisConnectionError("connection closed"))
        if self.transport is not None:
            self.transport.close()

    def send(self, command: bytes) -> asyncio.Future[object]:
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        # Written at once, not gathered for the end of the loop turn: under load a turn runs many
        # requests, and holding the first one's command until the last is done idles Redis meanwhile
        # (measured: more latency at 50 clients despite fewer writes).
        if self.transport is not None and not self.closed:
            self.transport.write(command)
        return waiter

    def send_all(self, commands: list[bytes]) -> list[asyncio.Future[object]]:
        """Several commands in one write; one waiter each, in order."""
        loop = asyncio.get_running_loop()
        waiters = [loop.create_future() for _ in commands]
        self.waiters.extend(waiters)
        if self.transport is not None and not self.closed:
            self.transport.write(b"".join(commands))
        return waiters


C = TypeVar("C", bound=_Connection)


class RedisWire:
    """Lazily connected; after a failure the next call connects again (the caller's circuit paces that)."""

    def __init__(self, url: str, *, connect_timeout_s: float) -> None:
        parts = urlsplit(url)
        if parts.scheme != "redis":
            raise ValueError("RedisWire speaks plain redis:// only")
        self.host = parts.hostname or "localhost"
        self.port = parts.port or 6379
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.db = int(parts.path.lstrip("/") or 0)
        self.connect_timeout_s = connect_timeout_s
        self._conn: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._scripts: dict[bytes, bytes] = {}  # sha -> source, for NOSCRIPT after a Redis restart

    @staticmethod
    def supports(url: str | None) -> bool:
        return bool(url) and urlsplit(url).scheme == "redis"

    async def _connection(self) -> _Connection:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        try:
            return await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    async def _connect(self) -> _Connection:
        conn = await self.connect(_Connection)
        self._conn = conn
        return conn

    async def connect(self, factory: Callable[[], C]) -> C:
        """A new connection (`factory` makes its protocol), logged in and on the URL's database."""
        loop = asyncio.get_running_loop()
        conn: C | None = None
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(factory, self.host, self.port)
                setup = []
                if self.password is not None:
                    auth = ("AUTH", self.username, self.password) if self.username else ("AUTH", self.password)
                    setup.append(conn.send(pack(auth)))
                if self.db:
                    setup.append(conn.send(pack(("SELECT", self.db))))
                for reply in setup:
                    await reply
        except BaseException as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, (OSError, TimeoutError)):
                raise RedisConnectionError(f"cannot connect to redis at {self.host}:{self.port}: {exc!r}") from None
            raise
        return conn

    async def call(self, *args: Arg) -> object:
        conn = await self._connection()
        return await conn.send(pack(args))

    async def pipeline(self, commands: list[bytes]) -> list[object]:
        """Packed commands (see `Batch`) in one write; their replies in order. A command Redis refused
        raises its ResponseError after every reply arrived (as redis-py's pipeline does)."""
        if not commands:
            return []
        conn = await self._connection()
        waiters = conn.send_all(commands)
        try:
            await waiters[-1]  # replies come in order: the last one arriving means all did
        except ResponseError:
            pass  # a refused command: raised below, the first one first
        except BaseException:
            for waiter in waiters:  # cut short (deadline, lost connection): nothing left pending or unread
                if not waiter.done():
                    waiter.cancel()
                elif not waiter.cancelled():
                    waiter.exception()
            raise
        errors = [error for waiter in waiters if (error := waiter.exception()) is not None]
        if errors:
            raise errors[0]
        return [waiter.result() for waiter in waiters]

    def register_script(self, source: str) -> bytes:
        sha = hashlib.sha1(source.encode()).hexdigest().encode()
        self._scripts[sha] = source.encode()
        return sha

    async def evalsha(self, sha: bytes, keys: tuple[Arg, ...], args: tuple[Arg, ...]) -> object:
        """EVALSHA, falling back to EVAL (which caches the script again) after a restart emptied Redis's cache."""
        try:
            return await self.call("EVALSHA", sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            return await self.call("EVAL", self._scripts[sha], len(keys), *keys, *args)

    async def aclose(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class Batch:
    """The pipeline commands the gateway's batched writes use (`stage(pipe)` in limits, usage, cache),
    packed for `RedisWire.pipeline`: redis-py's pipeline spent ~10 Python calls per command on them."""

    def __init__(self) -> None:
        self.commands: list[bytes] = []

    def __len__(self) -> int:
        return len(self.commands)

    def incrby(self, name: str, amount: int) -> None:
        self.commands.append(pack(("INCRBY", name, amount)))

    def hincrby(self, name: str, key: str, amount: int) -> None:
        self.commands.append(pack(("HINCRBY", name, key, amount)))

    def expire(self, name: str, seconds: int, nx: bool = False) -> None:
        self.commands.append(pack(("EXPIRE", name, seconds, "NX") if nx else ("EXPIRE", name, seconds)))

    def set(self, name: str, value: bytes | str, ex: int | None = None) -> None:
        self.commands.append(pack(("SET", name, value, "EX", ex) if ex else ("SET", name, value)))
