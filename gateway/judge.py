"""`python -m gateway judge`: an LLM judge over a random sample of a route's captured answers.

Each answer is scored from 0 to 1 against a rubric (a text file) by a judge model reached through the
gateway's own API (any route or model it serves: a larger local model or a hosted one). Scores are
kept as feedback of kind `judge`; the per-variant mean with a 95 % confidence interval is printed and
stored as a judge run, which the gateways export as `gateway_judge_score{route,variant}` (the first run
of a route and variant, or one marked `--baseline`, is the baseline the alert compares with).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from gateway.store.cli import store_url
from gateway.store.db import create_engine
from gateway.store.queries import add_feedback, add_judge_run, sample_answers
from gateway.store.since import parse_since

PROMPT = """You grade an assistant's answer against a rubric.

Rubric:
{rubric}

Conversation:
{conversation}

Answer to grade:
<answer>
{answer}
</answer>

Reply with a JSON object only: {{"score": <a number from 0 (worst) to 1 (best)>, "reason": "<one sentence>"}}"""
_NUMBER = re.compile(r'"?score"?\s*[:=]\s*([0-9]*\.?[0-9]+)', re.I)
Z95 = 1.96


@dataclass(frozen=True)
class Verdict:
    request_id: str
    variant: str
    score: float
    reason: str


def judge_prompt(rubric: str, row: dict[str, Any]) -> str:
    messages = row.get("messages")
    if isinstance(messages, list):
        conversation = "\n".join(f"{m.get('role')}: {m.get('content')}" for m in messages)
    else:
        conversation = f"user: {(messages or {}).get('prompt')}"
    return PROMPT.format(rubric=rubric.strip(), conversation=conversation, answer=row.get("answer") or "")


def _clipped(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return min(1.0, max(0.0, number)) if math.isfinite(number) else None


def parse_score(text: str) -> tuple[float, str] | None:
    """The judge's score (clipped to 0..1) and reason, from its JSON reply, a `score: x` fragment, or a reply
    that is only a number; None when the reply holds no score (a small judge model often answers otherwise)."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        found = {str(k).lower(): v for k, v in data.items()}
        score = _clipped(found.get("score")) if not isinstance(found.get("score"), bool) else None
        if score is not None:
            return score, str(found.get("reason") or "")
    elif isinstance(data, int | float) and not isinstance(data, bool):
        score = _clipped(data)
        return (score, "") if score is not None else None
    match = _NUMBER.search(text)
    score = _clipped(match.group(1)) if match else None
    return (score, "") if score is not None else None


def mean_ci(scores: Sequence[float]) -> tuple[float, float, float]:
    """Mean and a normal-approximation 95 % interval (clipped to 0..1)."""
    n = len(scores)
    mean = sum(scores) / n
    if n < 2:
        return mean, 0.0, 1.0
    sd = math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1))
    half = Z95 * sd / math.sqrt(n)
    return mean, max(0.0, mean - half), min(1.0, mean + half)


async def grade(client: aiohttp.ClientSession, judge_model: str, rubric: str, row: dict[str, Any],
                max_tokens: int = 200) -> Verdict | str:
    """The verdict on one answer, or why there is none: `http_error`, `failed` (no answer from the gateway)
    or `unparseable` (the judge's reply holds no score). One stderr line per skipped answer, without text."""
    body = {"model": judge_model, "temperature": 0, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": judge_prompt(rubric, row)}],
            "response_format": {"type": "json_object"}}
    try:
        async with client.post("v1/chat/completions", json=body) as response:
            if response.status != 200:
                text = await response.text()
                print(f"judge: {row['request_id']}: HTTP {response.status}: {text[:200]}", file=sys.stderr)
                return "http_error"
            answer = await response.json(content_type=None)
        content = answer["choices"][0]["message"].get("content") or ""
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        print(f"judge: {row['request_id']}: no answer from the gateway ({type(exc).__name__})", file=sys.stderr)
        return "failed"
    parsed = parse_score(content)
    if parsed is None:
        print(f"judge: {row['request_id']}: no score in the judge's reply ({len(content)} characters); skipped",
              file=sys.stderr)
        return "unparseable"
    return Verdict(row["request_id"], row["variant"], *parsed)


@dataclass(frozen=True)
class Outcome:
    sampled: int
    variants: dict[str, dict[str, float]]
    skipped: dict[str, int]  # reason -> answers without a verdict (unparseable, http_error, failed)


def _skipped_text(skipped: dict[str, int]) -> str:
    return ", ".join(f"{n} {why}" for why, n in sorted(skipped.items())) or "none"


async def run(args: argparse.Namespace) -> Outcome:
    rubric = args.rubric.read_text()
    engine = create_engine(store_url())
    try:
        rows = await sample_answers(engine, route=args.route, since=args.since, n=args.sample)
        if not rows:
            raise SystemExit(f"error: no captured answers of {args.route!r} in the window")
        async with aiohttp.ClientSession(base_url=args.gateway_url.rstrip("/") + "/",
                                         timeout=aiohttp.ClientTimeout(total=args.timeout),
                                         connector=aiohttp.TCPConnector(limit=args.concurrency),
                                         headers={"Authorization": f"Bearer {args.api_key}"}) as client:
            gate = asyncio.Semaphore(args.concurrency)

            async def one(row: dict[str, Any]) -> Verdict | str:
                async with gate:
                    return await grade(client, args.judge_model, rubric, row, args.max_tokens)

            results = await asyncio.gather(*(one(r) for r in rows))
        verdicts = [v for v in results if isinstance(v, Verdict)]
        skipped = dict(Counter(v for v in results if isinstance(v, str)))
        if not verdicts:
            raise SystemExit(f"error: the judge scored none of the {len(rows)} sampled answers "
                             f"(skipped: {_skipped_text(skipped)}); see the lines above")
        for v in verdicts:
            await add_feedback(engine, request_id=v.request_id, kind="judge", value=v.score, text=v.reason or None,
                               source=args.judge_model)
        summary: dict[str, dict[str, float]] = {}
        for variant in sorted({v.variant for v in verdicts}):
            scores = [v.score for v in verdicts if v.variant == variant]
            mean, low, high = mean_ci(scores)
            summary[variant] = {"n": len(scores), "mean": mean, "ci_low": low, "ci_high": high}
            await add_judge_run(engine, route=args.route, variant=variant, judge_model=args.judge_model,
                                n=len(scores), mean=mean, ci_low=low, ci_high=high,
                                baseline=True if args.baseline else None)
        return Outcome(sampled=len(rows), variants=summary, skipped=skipped)
    finally:
        await engine.dispose()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gateway judge", description=__doc__.split("\n\n")[0])
    p.add_argument("--route", required=True, help="the route (or model) whose captured answers are judged")
    p.add_argument("--sample", type=int, default=50, help="answers to judge (a random sample)")
    p.add_argument("--since", type=parse_since, default=parse_since("7d"), help="window: 7d, 12h, an ISO date")
    p.add_argument("--rubric", type=Path, required=True, help="a text file: what a good answer is")
    p.add_argument("--judge-model", required=True, help="a route or model the gateway serves")
    p.add_argument("--gateway-url", default=os.environ.get("GATEWAY_URL", "http://127.0.0.1:8000"))
    p.add_argument("--api-key", default=os.environ.get("GATEWAY_API_KEY", ""), help="default: $GATEWAY_API_KEY")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--max-tokens", type=int, default=200, help="longest judge reply")
    p.add_argument("--baseline", action="store_true", help="make this run the baseline later runs compare with")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    if args.sample < 1 or args.max_tokens < 1 or not args.rubric.is_file():
        print("error: --sample and --max-tokens must be at least 1 and --rubric an existing file", file=sys.stderr)
        return 2
    outcome = asyncio.run(run(args))
    if args.json:
        print(json.dumps({"route": args.route, "judge_model": args.judge_model, "sampled": outcome.sampled,
                          "skipped": outcome.skipped, "variants": outcome.variants}, indent=2))
        return 0
    print(f"{'variant':<30} {'n':>4} {'mean':>6}  95% CI")
    for variant, s in outcome.variants.items():
        print(f"{variant:<30} {s['n']:>4} {s['mean']:>6.3f}  [{s['ci_low']:.3f}, {s['ci_high']:.3f}]")
    print(f"{outcome.sampled} answers sampled; skipped without a score: {_skipped_text(outcome.skipped)}")
    return 0
