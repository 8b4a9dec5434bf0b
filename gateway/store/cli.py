"""`python -m gateway migrate` (one-shot schema upgrade) and `python -m gateway export` (a JSONL dump of
captured inferences with their feedback, for `python -m trainer dataset --from-file`).

Both read DATABASE_URL (or the SQLite default) from the same environment as the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any

from gateway.settings import Settings
from gateway.store.db import async_url, create_engine, ensure_sqlite_folder, migrate
from gateway.store.queries import export_rows
from gateway.store.since import parse_since


def store_url() -> str:
    """The gateway's database, from the same settings (the SQLite default is one file per user)."""
    settings = Settings()
    if not settings.database_url:
        ensure_sqlite_folder(settings.sqlite_path)
    return async_url(settings.database_url.get_secret_value() if settings.database_url else None,
                     settings.sqlite_path)


def _json_default(value: Any) -> str:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"not JSON: {type(value).__name__}")


async def _migrate() -> str | None:
    engine = create_engine(store_url())
    try:
        return await migrate(engine)
    finally:
        await engine.dispose()


async def _export(route: str | None, since: datetime | None, out: Path | None) -> int:
    engine = create_engine(store_url())
    count = 0
    stream = out.open("w") if out is not None else sys.stdout
    try:
        async for row in export_rows(engine, route=route, since=since):
            stream.write(json.dumps(row, default=_json_default) + "\n")
            count += 1
    finally:
        if out is not None:
            stream.close()
        await engine.dispose()
    return count


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway", description="The inference store.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply the database migrations (idempotent; one process at a time)")
    export = sub.add_parser("export", help="captured inferences with their feedback, as JSONL")
    export.add_argument("--route", help="a route (or model) name; default: all")
    export.add_argument("--since", type=parse_since, help="30d, 12h, or an ISO date; default: everything")
    export.add_argument("--out", type=Path, help="file to write (default: stdout)")
    args = parser.parse_args(argv)
    if args.command == "migrate":
        print(f"database at revision {asyncio.run(_migrate())}")
        return 0
    count = asyncio.run(_export(args.route, args.since, args.out))
    print(f"exported {count} inference(s)", file=sys.stderr)
    return 0
