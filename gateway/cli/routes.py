"""`python -m gateway routes list|show|set|delete|promote|rollback|history|stats`: the admin API from a shell.

It calls the gateway it runs beside (gateway/cli/client.py) with the bootstrap admin key
(`GATEWAY_ADMIN_KEY`, or the file `GATEWAY_ADMIN_KEY_FILE` names), so every change gets the API's checks
(served models, weights) and history entry.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from gateway.cli.client import GatewayClient
from gateway.cli.errors import CliError
from gateway.settings.files import secret_from_environment


def add_parser(parent: Any) -> None:
    parser = parent.add_parser("routes", help="manage model routes through the admin API")
    parser.set_defaults(run=main)
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="every route with its variants and weights")
    for action, text in (
        ("show", "one route"),
        ("rollback", "restore the route before its last change"),
        ("history", "every change to a route, newest first"),
        ("stats", "per-variant signals"),
        ("delete", "remove a route"),
    ):
        sub.add_parser(action, help=text).add_argument("name")
    put = sub.add_parser("set", help="create or replace a route from a JSON file ('-': standard input)")
    put.add_argument("name")
    put.add_argument("file", help='{"variants": [{"model": ..., "weight": ...}], "fallbacks": [...], ...}')
    promote = sub.add_parser("promote", help="send 100 %% to one variant")
    promote.add_argument("name")
    promote.add_argument("model")


def _request(args: argparse.Namespace) -> tuple[str, str, Any]:
    """The admin API call an action stands for: (method, path, body)."""
    path = "/admin/routes"
    if args.action == "list":
        return "GET", path, None
    path += f"/{args.name}"
    if args.action == "show":
        return "GET", path, None
    if args.action == "delete":
        return "DELETE", path, None
    if args.action in ("history", "stats"):
        return "GET", f"{path}/{args.action}", None
    if args.action == "rollback":
        return "POST", f"{path}/rollback", None
    if args.action == "promote":
        return "POST", f"{path}/promote", {"model": args.model}
    try:
        text = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read()  # noqa: SIM115
        spec = json.loads(text)
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise CliError(f"{args.file} is not JSON: {exc}") from None
    return "PUT", path, spec


async def _call(method: str, path: str, body: Any) -> Any:
    async with GatewayClient(secret_from_environment("GATEWAY_ADMIN_KEY") or "") as gateway:
        return await gateway.call(method, path, body)


def main(args: argparse.Namespace) -> int:
    print(json.dumps(asyncio.run(_call(*_request(args))), indent=2))
    return 0
