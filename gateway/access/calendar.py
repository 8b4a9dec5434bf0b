"""UTC calendar strings for Redis keys (usage day, budget month), formatted once per day per format
rather than by strftime on every request."""

from __future__ import annotations

import time
from datetime import UTC, datetime

_formatted: dict[str, tuple[int, str]] = {}  # format -> (day number, string)


def utc_date(fmt: str, now: float | None = None) -> str:
    now = time.time() if now is None else now
    day = int(now // 86400)
    cached = _formatted.get(fmt)
    if cached is None or cached[0] != day:
        cached = _formatted[fmt] = (day, datetime.fromtimestamp(now, UTC).strftime(fmt))
    return cached[1]
