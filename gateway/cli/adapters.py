"""`python -m gateway adapters list|show|register|remove`: the adapter registry from a shell.

Works on the registry in Redis directly (REDIS_URL from the same environment as the gateway), like
`python -m gateway keys`; gateways see a change at their next model discovery.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from gateway.adapters.registry import Adapter, AdapterRegistry, AdapterSpec
from gateway.cli.errors import CliError
from gateway.settings import Settings
from gateway.state.redis import RedisState


def add_parser(parent: Any) -> None:
    parser = parent.add_parser("adapters", help="list, show, register or remove LoRA adapters")
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    parser.set_defaults(run=main)
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="list registered adapters")
    sub.add_parser("show", help="show one adapter").add_argument("name")
    sub.add_parser("remove", help="remove an adapter").add_argument("name")
    reg = sub.add_parser("register", help="register an adapter (or a new version of one)")
    reg.add_argument("name")
    reg.add_argument("--base", required=True, help="the base model's name as the replicas list it")
    reg.add_argument("--digest", required=True, help="sha256 of the adapter weights")
    reg.add_argument("--version", type=int, default=1)
    reg.add_argument("--gguf", help="the adapter's GGUF file as llama-server sees it")
    reg.add_argument("--peft", help="the adapter's PEFT folder as vLLM sees it")


def _row(a: Adapter) -> str:
    files = " ".join(f"{kind}={path}" for kind, path in sorted(a.files.items()))
    return f"{a.name:<24} base={a.base} v{a.version} sha256:{a.short_digest} {files}"


async def run(args: argparse.Namespace, settings: Settings) -> list[Adapter] | Adapter:
    if not settings.redis_url:
        raise CliError("REDIS_URL is not set: the registry lives in the gateway's Redis; run this where it is")
    redis = RedisState.from_url(settings.redis_url, timeout_s=2.0, retry_after_s=0.0)
    registry = AdapterRegistry.for_redis(redis)
    try:
        if args.action == "list":
            return await registry.list()
        if args.action == "show":
            return await registry.get(args.name)
        if args.action == "remove":
            return await registry.remove(args.name)
        files = {kind: path for kind in ("gguf", "peft") if (path := getattr(args, kind))}
        return await registry.register(
            args.name, AdapterSpec(base=args.base, version=args.version, digest=args.digest, files=files)
        )
    finally:
        await redis.close()


def main(args: argparse.Namespace) -> int:
    result = asyncio.run(run(args, Settings()))
    items = result if isinstance(result, list) else [result]
    if args.json:
        data = [a.public_view() for a in items]
        print(json.dumps(data if isinstance(result, list) else data[0], indent=2))
    else:
        print("\n".join(_row(a) for a in items) or "(no adapters)")
    return 0
