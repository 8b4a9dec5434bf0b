"""The review queue: the captured answers that most need a person, handed out one at a time.

An answer leaves everyone's queue once a reviewer (or an admin) gives feedback on it: that is read from the
inference log, so it holds across replicas. While someone has an answer open it is claimed for them (a
Redis key with a lifetime, so an abandoned claim lapses), and `next_for` skips what others hold. Without
Redis the claims are this process's own.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.state.redis import RedisState, RedisUnavailable
from gateway.store.queries import feedback_of, inference_of, review_candidates

CLAIM_S = 600.0  # how long an answer stays with the reviewer who opened it
JUDGE_BELOW = 0.5  # a judge score under this puts an answer in the queue
SAMPLE_EVERY = 10  # one in this many of the answers nothing flagged
LOOKAHEAD = 50  # candidates read per call: enough to step over the ones others hold


class ReviewQueue:
    def __init__(
        self,
        engine: AsyncEngine,
        redis: RedisState,
        *,
        claim_s: float = CLAIM_S,
        judge_below: float = JUDGE_BELOW,
        sample_every: int = SAMPLE_EVERY,
    ) -> None:
        self.engine, self.redis = engine, redis
        self.claim_s, self.judge_below, self.sample_every = claim_s, judge_below, sample_every
        self._local: dict[str, tuple[str, float]] = {}  # request id -> (holder, until), without Redis

    async def waiting(self, *, route: str | None = None, limit: int = LOOKAHEAD) -> list[dict[str, Any]]:
        """What is in the queue, most urgent first (claimed ones included)."""
        return await review_candidates(
            self.engine, route=route, limit=limit, judge_below=self.judge_below, sample_every=self.sample_every
        )

    async def next_for(
        self, who: str, *, route: str | None = None, skip: frozenset[str] = frozenset()
    ) -> dict[str, Any] | None:
        """The most urgent answer nobody else holds and `who` did not skip, claimed for `who`, in full with its
        feedback; None when the queue is empty for them."""
        for candidate in await self.waiting(route=route, limit=LOOKAHEAD + len(skip)):
            if candidate["request_id"] in skip:
                continue
            if await self._claim(candidate["request_id"], who):
                row = await inference_of(self.engine, candidate["request_id"])
                if row is None:  # erased meanwhile
                    continue
                notes = await feedback_of(self.engine, candidate["request_id"])
                return {
                    **row,
                    "reason": candidate["reason"],
                    "claimed_until": time.time() + self.claim_s,
                    "feedback": [n for n in notes if n["kind"] != "judge"],
                    "judge": [n for n in notes if n["kind"] == "judge"],
                }
        return None

    async def _claim(self, request_id: str, who: str) -> bool:
        """Hold `request_id` for `who` unless someone else does; renews `who`'s own claim."""
        key = f"gw:review:claim:{request_id}"
        if not self.redis.configured:
            return self._claim_locally(request_id, who)
        try:
            holder = await self.redis.run("review_claim", lambda r: r.set(key, who, nx=True, ex=int(self.claim_s)))
            if holder:
                return True
            current = await self.redis.run("review_claim", lambda r: r.get(key))
        except RedisUnavailable:
            return self._claim_locally(request_id, who)
        mine = current is not None and (current.decode() if isinstance(current, bytes) else str(current)) == who
        if mine:
            await self.redis.run("review_claim", lambda r: r.expire(key, int(self.claim_s)))
        return mine

    def _claim_locally(self, request_id: str, who: str) -> bool:
        now = time.monotonic()
        holder, until = self._local.get(request_id, (who, 0.0))
        if holder != who and until > now:
            return False
        self._local[request_id] = (who, now + self.claim_s)
        return True
