"""`--since` values of the CLI's commands (export, judge): `30d`, `12h`, `90m`, `2w`, or an ISO date/time (UTC)."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta

_SPAN = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    now = now or datetime.now(UTC)
    match = _SPAN.match(text.strip())
    if match:
        return now - timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected e.g. 30d, 12h or 2025-01-31, got {text!r}") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)
