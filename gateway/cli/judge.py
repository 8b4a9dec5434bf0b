"""`python -m gateway judge`: the judge job (gateway/jobs/judge.py) from a shell, grading through the
gateway's own API with the CLI's client."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from gateway.cli.client import GatewayClient, default_url
from gateway.cli.errors import CliError
from gateway.cli.since import parse_since
from gateway.jobs.judge import NothingToJudge, Outcome, run, skipped_text
from gateway.settings import Settings
from gateway.settings.files import secret_from_environment
from gateway.store.db import create_engine, url_from_settings


def add_parser(parent: Any) -> None:
    p = parent.add_parser("judge", help="an LLM judge over a sample of a route's captured answers")
    p.add_argument("--route", required=True, help="the route (or model) whose captured answers are judged")
    p.add_argument("--sample", type=int, default=50, help="answers to judge (a random sample)")
    p.add_argument("--since", type=parse_since, default=parse_since("7d"), help="window: 7d, 12h, an ISO date")
    p.add_argument("--rubric", type=Path, required=True, help="a text file: what a good answer is")
    p.add_argument("--judge-model", required=True, help="a route or model the gateway serves")
    p.add_argument("--gateway-url", default=None, help="default: $GATEWAY_URL, else the local gateway")
    p.add_argument("--api-key", default=None, help="default: $GATEWAY_API_KEY, or the file $GATEWAY_API_KEY_FILE names")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--max-tokens", type=int, default=200, help="longest judge reply")
    p.add_argument("--baseline", action="store_true", help="make this run the baseline later runs compare with")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    p.set_defaults(run=main)


async def _judge(args: argparse.Namespace) -> Outcome:
    engine = create_engine(url_from_settings(Settings()))
    try:
        async with GatewayClient(
            args.api_key if args.api_key is not None else secret_from_environment("GATEWAY_API_KEY") or "",
            base_url=args.gateway_url or default_url(),
            timeout_s=args.timeout,
            connections=args.concurrency,
        ) as gateway:
            return await run(
                engine,
                gateway.chat,
                route=args.route,
                since=args.since,
                sample=args.sample,
                rubric=args.rubric.read_text(),
                judge_model=args.judge_model,
                concurrency=args.concurrency,
                max_tokens=args.max_tokens,
                baseline=args.baseline,
            )
    except NothingToJudge as exc:
        raise CliError(str(exc)) from None
    finally:
        await engine.dispose()


def main(args: argparse.Namespace) -> int:
    if args.sample < 1 or args.max_tokens < 1 or args.concurrency < 1 or not args.rubric.is_file():
        raise CliError("--sample, --max-tokens and --concurrency must be at least 1 and --rubric an existing file")
    outcome = asyncio.run(_judge(args))
    if args.json:
        print(
            json.dumps(
                {
                    "route": args.route,
                    "judge_model": args.judge_model,
                    "sampled": outcome.sampled,
                    "skipped": outcome.skipped,
                    "variants": outcome.variants,
                },
                indent=2,
            )
        )
        return 0
    print(f"{'variant':<30} {'n':>4} {'mean':>6}  95% CI")
    for variant, s in outcome.variants.items():
        print(f"{variant:<30} {s['n']:>4} {s['mean']:>6.3f}  [{s['ci_low']:.3f}, {s['ci_high']:.3f}]")
    print(f"{outcome.sampled} answers sampled; skipped without a score: {skipped_text(outcome.skipped)}")
    return 0
