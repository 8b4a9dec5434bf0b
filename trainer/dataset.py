"""`python -m trainer dataset`: training rows from production traffic.

Input: captured inferences with their feedback, read from the gateway's database (`--database-url`)
or from a dump written by `python -m gateway export` (`--from-file`, for a trainer without database
access). Each row is judged by its feedback:

- feedback the gateway could not tie to the request's sender (`role: unverified`) is ignored;
- a correction (the answer it should have been) is the target, whatever the ratings say;
- an answer rated up (its latest rating), or scored / judged at least `--min-score` on average, is a
  positive: the model's own answer is the target;
- an answer rated down without a correction is left out, as is one with no signal, a low score, no
  answer, or content the trainer's `messages` format cannot hold.

Rows are deduplicated by prompt (a correction beats a positive; the newest wins), then split by time:
the newest `--heldout` share is the held-out set, so no held-out prompt is in the training rows.
Writes OUT (train), OUT's `.heldout.jsonl` sibling and a `.report.json` saying what was taken and why.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from trainer.data import row_to_messages

PRIORITY = {"correction": 2, "rated_up": 1, "scored": 1}
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


def _time(value: Any) -> datetime:
    at = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return at if at.tzinfo else at.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Example:
    request_id: str
    at: datetime
    why: str  # correction | rated_up | scored
    messages: list[dict[str, str]]

    @property
    def prompt_key(self) -> str:
        return hashlib.sha256(json.dumps(self.messages[:-1], sort_keys=True).encode()).hexdigest()


def judge_row(row: dict[str, Any], min_score: float) -> tuple[str, str | None]:
    """(why, target text): why is a reason taken (correction, rated_up, scored) or left out."""
    # Feedback the gateway could not tie to the request's sender (`unverified`) never becomes a target.
    trusted = [f for f in row.get("feedback") or [] if f.get("role") != "unverified"]
    notes = sorted(trusted, key=lambda f: (str(f.get("created_at")), f.get("id") or 0))
    corrections = [f["text"] for f in notes if f.get("kind") == "correction" and f.get("text")]
    if corrections:
        return "correction", corrections[-1]
    answer = row.get("answer")
    if row.get("outcome") not in ("success", "cache_hit") or not answer:
        return "no_answer", None
    ratings = [f["value"] for f in notes if f.get("kind") == "rating" and f.get("value") is not None]
    if ratings:
        return ("rated_up", answer) if ratings[-1] >= 1 else ("rated_down", None)
    scores = [f["value"] for f in notes if f.get("kind") in ("score", "judge") and f.get("value") is not None]
    if scores:
        return ("scored", answer) if sum(scores) / len(scores) >= min_score else ("low_score", None)
    return "no_signal", None


def to_example(row: dict[str, Any], min_score: float) -> tuple[str, Example | None]:
    why, target = judge_row(row, min_score)
    if target is None:
        return why, None
    prompt = row.get("messages")
    if not isinstance(prompt, list):  # a text completion ({"prompt": ...})
        text = (prompt or {}).get("prompt") if isinstance(prompt, dict) else None
        prompt = [{"role": "user", "content": text}] if isinstance(text, str) else None
    if not prompt:
        return "unsupported_content", None
    try:
        messages = row_to_messages({"messages": [*prompt, {"role": "assistant", "content": target}]}, "messages", None)
    except ValueError:
        return "unsupported_content", None
    return why, Example(request_id=row["request_id"], at=_time(row["created_at"]), why=why, messages=messages)


def build(
    rows: Iterable[dict[str, Any]], *, min_score: float = 0.8, heldout: float = 0.1
) -> tuple[list[Example], list[Example], dict[str, Any]]:
    taken: dict[str, Example] = {}
    reasons: Counter[str] = Counter()
    seen = 0
    for row in rows:
        seen += 1
        why, example = to_example(row, min_score)
        reasons[why] += 1
        if example is None:
            continue
        kept = taken.get(example.prompt_key)
        if kept is None or (PRIORITY[example.why], example.at) >= (PRIORITY[kept.why], kept.at):
            taken[example.prompt_key] = example
    examples = sorted(taken.values(), key=lambda e: (e.at, e.request_id))
    n_heldout = round(len(examples) * heldout) if len(examples) > 1 else 0
    if heldout > 0 and len(examples) > 1:
        n_heldout = max(1, n_heldout)
    train, held = examples[: len(examples) - n_heldout], examples[len(examples) - n_heldout :]
    report = {
        "inferences_read": seen,
        "reasons": dict(sorted(reasons.items())),  # taken: correction, rated_up, scored; the rest left out
        "duplicates_dropped": sum(reasons[k] for k in PRIORITY) - len(examples),
        "train": len(train),
        "heldout": len(held),
        "train_by_reason": dict(Counter(e.why for e in train)),
        "heldout_from": held[0].at.isoformat() if held else None,
        "min_score": min_score,
    }
    return train, held, report


def write(path: Path, examples: Sequence[Example]) -> None:
    with path.open("w") as out:
        for e in examples:
            out.write(json.dumps({"messages": e.messages, "request_id": e.request_id, "source": e.why}) + "\n")


def read_dump(path: Path, *, route: str | None, since: datetime | None) -> list[dict[str, Any]]:
    rows = []
    with path.open() as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            if route is not None and route not in (row.get("route"), row.get("model")):
                continue
            if since is not None and _time(row["created_at"]) < since:
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
