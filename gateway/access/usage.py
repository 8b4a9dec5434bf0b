"""Usage per key, model and day: requests, input tokens, output tokens.

Redis: one hash per key and UTC day, `gw:usage:<key id>:<YYYY-MM-DD>`, fields
`<model>|requests`, `<model>|input`, `<model>|output`, kept ~400 days (AOF makes it durable).
While Redis is unavailable the counts are held in a bounded in-process buffer and written on
the next successful call, so a Redis outage loses no accounting unless the buffer overflows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from gateway.access.calendar import utc_date
from gateway.state.redis import RedisState

FIELDS = ("requests", "input", "output")
RETENTION_S = 400 * 86400
MAX_QUERY_DAYS = 366


@dataclass(frozen=True, slots=True)
class UsageRow:
    day: str
    model: str
    requests: int
    input_tokens: int
    output_tokens: int


def day_range(start: date, end: date) -> list[str]:
    if end < start:
        raise ValueError("end date is before start date")
    if (end - start).days >= MAX_QUERY_DAYS:
        raise ValueError(f"a usage query spans at most {MAX_QUERY_DAYS} days")
    return [(start + timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]


def _rows(day: str, counts: dict[str, int]) -> list[UsageRow]:
    models = sorted({name.rsplit("|", 1)[0] for name in counts})
    return [
        UsageRow(day, m, counts.get(f"{m}|requests", 0), counts.get(f"{m}|input", 0), counts.get(f"{m}|output", 0))
        for m in models
    ]


class UsageStore:
    """Counts usage in Redis, or in process memory when `REDIS_URL` is unset."""

    def __init__(
        self, redis: RedisState, *, max_pending: int = 10_000, on_drop: Callable[[], None] | None = None
    ) -> None:
        """`on_drop`: called for each count lost because Redis was away long enough to fill the buffer."""
        self.redis = redis
        self.max_pending = max_pending
        # (key id, day) -> field -> count; the store itself without Redis, the buffer with it.
        self._counts: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
        self._on_drop = on_drop

    def _add_locally(self, key_id: str, day: str, model: str, values: tuple[int, int, int]) -> None:
        if self.redis.configured and (key_id, day) not in self._counts and len(self._counts) >= self.max_pending:
            if self._on_drop is not None:
                self._on_drop()
            return
        bucket = self._counts[(key_id, day)]
        for name, value in zip(FIELDS, values, strict=True):
            bucket[f"{model}|{name}"] = bucket.get(f"{model}|{name}", 0) + value

    def record(self, key_id: str, model: str, input_tokens: int, output_tokens: int, day: str | None = None) -> None:
        """Count one request. With Redis it is buffered until the next write-behind flush."""
        self._add_locally(key_id, day or utc_date("%Y-%m-%d"), model, (1, input_tokens, output_tokens))

    @property
    def has_pending(self) -> bool:
        return bool(self._counts)

    def stage(self, pipe: Any) -> Callable[[], None]:
        """Queue the buffered counts on `pipe`; the returned callback puts them back on failure."""
        if not self.redis.configured:
            return lambda: None
        pending, self._counts = self._counts, defaultdict(dict)
        for (key_id, day), fields in pending.items():
            name = f"gw:usage:{key_id}:{day}"
            for field_name, value in fields.items():
                pipe.hincrby(name, field_name, value)
            pipe.expire(name, RETENTION_S)

        def restore() -> None:
            for (key_id, day), fields in pending.items():
                bucket = self._counts[(key_id, day)]
                for field_name, value in fields.items():
                    bucket[field_name] = bucket.get(field_name, 0) + value

        return restore

    async def query(self, key_id: str, start: date, end: date) -> list[UsageRow]:
        days = day_range(start, end)
        if not self.redis.configured:
            return [row for d in days for row in _rows(d, self._counts.get((key_id, d), {}))]

        async def read(r: Any) -> list[Any]:
            async with r.pipeline(transaction=False) as pipe:
                for d in days:
                    pipe.hgetall(f"gw:usage:{key_id}:{d}")
                return await pipe.execute()

        results = await self.redis.run("usage_read", read)
        rows: list[UsageRow] = []
        for d, raw in zip(days, results, strict=True):
            rows.extend(_rows(d, {k.decode(): int(v) for k, v in raw.items()}))
        return rows
