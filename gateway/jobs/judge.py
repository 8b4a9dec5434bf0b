"""The judge: an LLM grades a random sample of a route's captured answers (`python -m gateway judge`).

Each answer is scored from 0 to 1 against a rubric (a text file) by a judge model reached through the
gateway's own API (any route or model it serves: a larger local model or a hosted one). Scores are
kept as feedback of kind `judge`; the per-variant mean with a 95 % confidence interval is printed and
stored as a judge run, which the gateways export as `gateway_judge_score{route,variant}` (the first run
of a route and variant, or one marked `--baseline`, is the baseline the alert compares with).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store.queries import add_feedback, add_judge_run, sample_answers

# The gateway's chat completions (POST /v1/chat/completions): a body in, the answer out; raises on failure
# with a message naming why (the CLI's GatewayClient.chat).
Chat = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

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


async def grade(chat: Chat, judge_model: str, rubric: str, row: dict[str, Any], max_tokens: int = 200) -> Verdict | str:
    """The verdict on one answer, or why there is none: `failed` (no answer from the gateway) or
    `unparseable` (the judge's reply holds no score). One stderr line per skipped answer, without text."""
    body = {
        "model": judge_model,
        "temperature": 0,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": judge_prompt(rubric, row)}],
        "response_format": {"type": "json_object"},
    }
    try:
        answer = await chat(body)
        content = answer["choices"][0]["message"].get("content") or ""
    except Exception as exc:  # noqa: BLE001 - one answer's failure is reported and skipped, not fatal
        print(f"judge: {row['request_id']}: no answer from the gateway ({exc})", file=sys.stderr)
        return "failed"
    parsed = parse_score(content)
    if parsed is None:
        print(
            f"judge: {row['request_id']}: no score in the judge's reply ({len(content)} characters); skipped",
            file=sys.stderr,
        )
        return "unparseable"
    return Verdict(row["request_id"], row["variant"], *parsed)


@dataclass(frozen=True)
class Outcome:
    sampled: int
    variants: dict[str, dict[str, float]]
    skipped: dict[str, int]  # reason -> answers without a verdict (unparseable, failed)


def skipped_text(skipped: dict[str, int]) -> str:
    return ", ".join(f"{n} {why}" for why, n in sorted(skipped.items())) or "none"


class NothingToJudge(Exception):
    """No captured answer in the window, or none the judge could score."""


async def run(
    engine: AsyncEngine,
    chat: Chat,
    *,
    route: str,
    since: datetime,
    sample: int,
    rubric: str,
    judge_model: str,
    concurrency: int = 4,
    max_tokens: int = 200,
    baseline: bool = False,
) -> Outcome:
    """Grade a sample of `route`'s answers since `since`; each score becomes feedback of kind `judge`, and
    each variant's mean a judge run (the gauges' source)."""
    rows = await sample_answers(engine, route=route, since=since, n=sample)
    if not rows:
        raise NothingToJudge(f"no captured answers of {route!r} in the window")
    gate = asyncio.Semaphore(concurrency)

    async def one(row: dict[str, Any]) -> Verdict | str:
        async with gate:
            return await grade(chat, judge_model, rubric, row, max_tokens)

    results = await asyncio.gather(*(one(r) for r in rows))
    verdicts = [v for v in results if isinstance(v, Verdict)]
    skipped = dict(Counter(v for v in results if isinstance(v, str)))
    if not verdicts:
        raise NothingToJudge(
            f"the judge scored none of the {len(rows)} sampled answers "
            f"(skipped: {skipped_text(skipped)}); see the lines above"
        )
    for v in verdicts:
        await add_feedback(
            engine, request_id=v.request_id, kind="judge", value=v.score, text=v.reason or None, source=judge_model
        )
    summary: dict[str, dict[str, float]] = {}
    for variant in sorted({v.variant for v in verdicts}):
        scores = [v.score for v in verdicts if v.variant == variant]
        mean, low, high = mean_ci(scores)
        summary[variant] = {"n": len(scores), "mean": mean, "ci_low": low, "ci_high": high}
        await add_judge_run(
            engine,
            route=route,
            variant=variant,
            judge_model=judge_model,
            n=len(scores),
            mean=mean,
            ci_low=low,
            ci_high=high,
            baseline=True if baseline else None,
        )
    return Outcome(sampled=len(rows), variants=summary, skipped=skipped)
