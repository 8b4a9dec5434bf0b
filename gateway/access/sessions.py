"""Console sessions: a signed-in browser holds only an opaque random id (an HttpOnly cookie); what it stands
for (the key it was opened with, its CSRF token, the answers its reviewer passed over) is kept here, in Redis
under the id's SHA-256 (a copy of Redis gives no usable cookie) with the session's lifetime, so every replica
knows it. Without Redis, in this process's memory. Closing a session deletes it at once."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import asdict, dataclass, field

import orjson

from gateway.state.redis import RedisState

MAX_SKIPPED = 100  # answers a reviewer passed over this session (the review queue's `skip` bound)


@dataclass
class Session:
    key_id: str
    csrf: str
    expires_at: float
    admin_digest: str | None = None  # opened with the bootstrap admin key: its SHA-256, to notice a new one
    skipped: list[str] = field(default_factory=list)

    def skip(self, request_id: str) -> None:
        if request_id not in self.skipped:
            self.skipped = [*self.skipped, request_id][-MAX_SKIPPED:]


def _stored_as(session_id: str) -> str:
    return "gw:console:session:" + hashlib.sha256(session_id.encode()).hexdigest()


class SessionStore:
    def __init__(self, redis: RedisState, *, lifetime_s: float) -> None:
        self.redis, self.lifetime_s = redis, lifetime_s
        self._local: dict[str, tuple[float, bytes]] = {}  # without Redis: key -> (expires at, session)

    async def open(self, key_id: str, *, admin_digest: str | None = None) -> tuple[str, Session]:
        """A new session for `key_id`: (the id for the cookie, the session)."""
        session_id = secrets.token_urlsafe(32)
        session = Session(key_id, secrets.token_urlsafe(32), time.time() + self.lifetime_s, admin_digest)
        await self.save(session_id, session)
        return session_id, session

    async def get(self, session_id: str) -> Session | None:
        key = _stored_as(session_id)
        if self.redis.configured:
            raw = await self.redis.run("console_session", lambda r: r.get(key))
        else:
            raw = self._local.get(key, (0.0, None))[1]
        if raw is None:
            return None
        session = Session(**orjson.loads(raw))
        return session if session.expires_at > time.time() else None

    async def save(self, session_id: str, session: Session) -> None:
        key, raw = _stored_as(session_id), orjson.dumps(asdict(session))
        left = max(1, int(session.expires_at - time.time()))
        if self.redis.configured:
            await self.redis.run("console_session", lambda r: r.set(key, raw, ex=left))
        else:
            now = time.time()
            self._local = {k: v for k, v in self._local.items() if v[0] > now}
            self._local[key] = (session.expires_at, raw)

    async def close(self, session_id: str) -> None:
        key = _stored_as(session_id)
        if self.redis.configured:
            await self.redis.run("console_session", lambda r: r.delete(key))
        else:
            self._local.pop(key, None)
