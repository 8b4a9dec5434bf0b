"""`python -m gateway routes list|show|set|promote|rollback|history`: the admin API from a shell.

It calls the gateway it runs beside (`GATEWAY_URL`, default http://127.0.0.1:$GATEWAY_PORT) with the
bootstrap admin key (`GATEWAY_ADMIN_KEY`), so `docker compose exec gateway python -m gateway routes list`
works as is, and every change gets the API's checks (served models, weights) and history entry.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gateway routes", description="Manage model routes.")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="every route with its variants and weights")
    for action, text in (("show", "one route"), ("rollback", "restore the route before its last change"),
                         ("history", "every change to a route, newest first"), ("stats", "per-variant signals"),
                         ("delete", "remove a route")):
        sub.add_parser(action, help=text).add_argument("name")
    put = sub.add_parser("set", help="create or replace a route from a JSON file ('-': standard input)")
    put.add_argument("name")
    put.add_argument("file", help='{"variants": [{"model": ..., "weight": ...}], "fallbacks": [...], ...}')
    promote = sub.add_parser("promote", help="send 100 %% to one variant")
    promote.add_argument("name")
    promote.add_argument("model")
    return parser


def request(method: str, path: str, body: Any = None) -> Any:
    base = os.environ.get("GATEWAY_URL") or f"http://127.0.0.1:{os.environ.get('GATEWAY_PORT', '8000')}"
    key = os.environ.get("GATEWAY_ADMIN_KEY", "")
    data = json.dumps(body).encode() if body is not None else None
    call = urllib.request.Request(base + path, data=data, method=method,
                                  headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(call, timeout=10) as answer:  # noqa: S310 - an http(s) URL we build
            return json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        detail = json.loads(exc.read() or b"{}").get("error", {}).get("message", exc.reason)
        raise SystemExit(f"error: {exc.code} {detail}") from None
    except urllib.error.URLError as exc:
        raise SystemExit(f"error: cannot reach the gateway at {base}: {exc.reason}") from None


def run(args: argparse.Namespace) -> Any:
    path = "/admin/routes"
    if args.action == "list":
        return request("GET", path)
    path += f"/{args.name}"
    if args.action == "show":
        return request("GET", path)
    if args.action == "delete":
        return request("DELETE", path)
    if args.action in ("history", "stats"):
        return request("GET", f"{path}/{args.action}")
    if args.action == "rollback":
        return request("POST", f"{path}/rollback")
    if args.action == "promote":
        return request("POST", f"{path}/promote", {"model": args.model})
    text = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read()  # noqa: SIM115
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"error: {args.file} is not JSON: {exc}") from None
    return request("PUT", path, spec)


def main(argv: Sequence[str]) -> int:
    print(json.dumps(run(build_parser().parse_args(argv)), indent=2))
    return 0
