"""`python -m gateway`: one command tree.

    python -m gateway [serve]                      the API (uvicorn)
    python -m gateway keys create|list|show|update|revoke ...   API keys, on the gateway's Redis
    python -m gateway token KEY_ID                 a short-lived JWT for a key
    python -m gateway adapters list|show|register|remove ...    the LoRA adapter registry
    python -m gateway routes list|show|set|...     model routes, through the admin API
    python -m gateway migrate | export ...         the inference log's database
    python -m gateway judge --route R ...          an LLM judge over captured answers

Every command reads the same settings as the gateway (environment, `.env`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from pydantic import ValidationError
from pydantic_settings import SettingsError

from gateway.cli import adapters, judge, keys, routes, serve, store
from gateway.cli.errors import CliError
from gateway.errors import GatewayError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gateway", description="The slm-stack gateway and its tools.")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (serve, keys, adapters, routes, store, judge):
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = getattr(args, "run", serve.run)
    try:
        return command(args)
    except (ValidationError, SettingsError) as exc:
        cause = f"\n{exc.__cause__}" if exc.__cause__ else ""
        print(f"gateway: invalid configuration:\n{exc}{cause}", file=sys.stderr)
        return 2
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except GatewayError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
