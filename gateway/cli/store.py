"""`python -m gateway migrate` (one-shot schema upgrade) and `python -m gateway export` (a JSONL dump of
captured inferences with their feedback, for `python -m trainer dataset --from-file`).

Both read DATABASE_URL (or the SQLite default) from the same environment as the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Any

from gateway.cli.since import parse_since
from gateway.settings import Settings
from gateway.store.db import create_engine, migrate, url_from_settings
from gateway.store.queries import export_rows


def _json_default(value: Any) -> str:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"not JSON: {type(value).__name__}")


async def _migrate() -> str | None:
    engine = create_engine(url_from_settings(Settings()))
    try:
        return await migrate(engine)
    finally:
        await engine.dispose()


async def _export(route: str | None, since: datetime | None, out: Path | None) -> int:
    engine = create_engine(url_from_settings(Settings()))
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


def add_parser(sub: Any) -> None:
    sub.add_parser("migrate", help="apply the database migrations (idempotent; one process at a time)").set_defaults(
        run=run_migrate
    )
    export = sub.add_parser("export", help="captured inferences with their feedback, as JSONL")
    export.add_argument("--route", help="a route (or model) name; default: all")
    export.add_argument("--since", type=parse_since, help="30d, 12h, or an ISO date; default: everything")
    export.add_argument("--out", type=Path, help="file to write (default: stdout)")
    export.set_defaults(run=run_export)


def run_migrate(_: argparse.Namespace) -> int:
    print(f"database at revision {asyncio.run(_migrate())}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    count = asyncio.run(_export(args.route, args.since, args.out))
    print(f"exported {count} inference(s)", file=sys.stderr)
    return 0
