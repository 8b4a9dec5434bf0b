"""`python -m trainer dataset`: training rows from production traffic.

Input: captured inferences with their feedback, read from the gateway's database (`--database-url`)
or from a dump written by `python -m gateway export` (`--from-file`, for a trainer without database
access). Which answers become rows, and how they are deduplicated and split, is
gateway/protocol/training_rows.py (the review console's dataset download uses the same code).
Writes OUT (train), OUT's `.heldout.jsonl` sibling and a `.report.json` saying what was taken and why.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gateway.protocol.training_rows import Example, build, jsonl, moment

_SPAN = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`30d`, `12h`, `90m`, or an ISO date/time (UTC when no zone is given)."""
    now = now or datetime.now(UTC)
    match = _SPAN.match(text.strip())
    if match:
        return now - timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--since: expected e.g. 30d, 12h or 2025-01-31, got {text!r}") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def write(path: Path, examples: Sequence[Example]) -> None:
    with path.open("w") as out:
        out.writelines(jsonl(examples))


def read_dump(path: Path, *, route: str | None, since: datetime | None) -> list[dict[str, Any]]:
    rows = []
    with path.open() as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            if route is not None and route not in (row.get("route"), row.get("model")):
                continue
            if since is not None and moment(row["created_at"]) < since:
                continue
            rows.append(row)
    return rows


async def read_database(url: str, *, route: str | None, since: datetime | None) -> list[dict[str, Any]]:
    try:
        from gateway.store.db import async_url, create_engine
        from gateway.store.queries import export_rows
    except ImportError:
        raise SystemExit(
            "error: --database-url needs the gateway package (sqlalchemy); "
            "use `python -m gateway export` and --from-file instead"
        ) from None
    engine = create_engine(async_url(url))
    try:
        return [row async for row in export_rows(engine, route=route, since=since)]
    finally:
        await engine.dispose()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trainer dataset", description=__doc__.split("\n\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--database-url", help="the gateway's DATABASE_URL")
    source.add_argument("--from-file", type=Path, help="a dump from `python -m gateway export`")
    p.add_argument("--route", help="a route (or model) name; default: all")
    p.add_argument("--since", type=parse_since, help="30d, 12h, or an ISO date; default: everything")
    p.add_argument("--out", type=Path, default=Path("dataset.jsonl"), help="training rows (JSONL)")
    p.add_argument("--heldout", type=float, default=0.1, help="newest share held out (0..0.9)")
    p.add_argument("--min-score", type=float, default=0.8, help="mean score/judge value a positive needs")
    return p


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    if not 0 <= args.heldout <= 0.9:
        print("error: --heldout must be between 0 and 0.9", file=sys.stderr)
        return 2
    if args.from_file is not None:
        if not args.from_file.is_file():
            print(f"error: no such file: {args.from_file}", file=sys.stderr)
            return 2
        rows = read_dump(args.from_file, route=args.route, since=args.since)
    else:
        rows = asyncio.run(read_database(args.database_url, route=args.route, since=args.since))
    train, held, report = build(rows, min_score=args.min_score, heldout=args.heldout)
    heldout_path = args.out.with_name(args.out.stem + ".heldout.jsonl")
    report_path = args.out.with_name(args.out.stem + ".report.json")
    write(args.out, train)
    write(heldout_path, held)
    report.update(
        route=args.route,
        since=args.since.isoformat() if args.since else None,
        train_file=str(args.out),
        heldout_file=str(heldout_path),
    )
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0
