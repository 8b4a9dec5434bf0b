"""`python -m gateway keys create|list|show|update|revoke ...` and `python -m gateway token KEY_ID`.

Works on the key store directly (REDIS_URL and GATEWAY_KEY_PEPPER from the same environment as
the gateway), so `docker compose exec gateway python -m gateway keys create --name ci` just works.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from gateway.access.jwt import TokenInvalid, jwt_from_settings, mint_token
from gateway.access.keys import ApiKey, KeyNotFound, KeySpec, RedisKeyStore, pepper_of, update_key
from gateway.cli.errors import CliError
from gateway.settings import Settings
from gateway.state.redis import RedisState


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _limit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", help="comma-separated allowed models (default: all)")
    p.add_argument("--rpm", type=int, help="requests per minute")
    p.add_argument("--tpm", type=int, help="tokens per minute")
    p.add_argument("--budget", type=int, dest="monthly_token_budget", help="tokens per calendar month")
    p.add_argument("--expires-days", type=float, help="key stops working after this many days")
    p.add_argument(
        "--capture",
        type=float,
        dest="capture_percent",
        metavar="PERCENT",
        help="share of this key's answers kept in the inference log (0-100)",
    )


def add_parser(sub: Any) -> None:
    keys = sub.add_parser("keys", help="create, list, show, update or revoke API keys")
    ksub = keys.add_subparsers(dest="action", required=True)
    create = ksub.add_parser("create", help="create a key; the plain key is printed once")
    create.add_argument("--name", required=True)
    create.add_argument("--owner", default="")
    create.add_argument("--scopes", default="inference", help="comma-separated: inference, reviewer, admin")
    _limit_args(create)
    ksub.add_parser("list", help="list keys (no secrets)")
    for name in ("show", "revoke"):
        ksub.add_parser(name, help=f"{name} a key").add_argument("key_id")
    update = ksub.add_parser("update", help="change a key's limits, models or expiry")
    update.add_argument("key_id")
    _limit_args(update)
    keys.set_defaults(run=main)
    token = sub.add_parser("token", help="mint a short-lived JWT for a key")
    token.add_argument("key_id")
    token.set_defaults(run=main)


def _expiry(days: float | None) -> float | None:
    return time.time() + days * 86400 if days else None


def _row(record: ApiKey) -> str:
    state = "revoked" if record.revoked else "expired" if not record.is_active() else "active"
    models = ",".join(record.models) if record.models is not None else "*"
    limits = f"rpm={record.rpm or '-'} tpm={record.tpm or '-'} budget={record.monthly_token_budget or '-'}"
    if record.capture_percent is not None:
        limits += f" capture={record.capture_percent:g}%"
    return (
        f"{record.id}  {record.name:<20} {state:<8} scopes={','.join(sorted(record.scopes))} models={models} {limits}"
    )


async def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any] | list[dict[str, Any]]:
    if not settings.redis_url:
        raise CliError("REDIS_URL is not set: keys made here would vanish; run this where the gateway's Redis is")
    redis = RedisState.from_url(settings.redis_url, timeout_s=2.0, retry_after_s=0.0)
    store = RedisKeyStore(redis, pepper_of(settings))
    try:
        if args.command == "token":
            return await _token(store, settings, args.key_id)
        if args.action == "create":
            spec = KeySpec(
                name=args.name,
                owner=args.owner,
                scopes=frozenset(_csv(args.scopes) or []),
                models=tuple(_csv(args.models) or ()) if args.models else None,
                expires_at=_expiry(args.expires_days),
                rpm=args.rpm,
                tpm=args.tpm,
                monthly_token_budget=args.monthly_token_budget,
                capture_percent=args.capture_percent,
            )
            record, secret = await store.create(spec)
            return {"key": secret, **record.public_view()}
        if args.action == "list":
            return [r.public_view() for r in await store.list()]
        if args.action == "show":
            found = await store.get(args.key_id)
            if found is None:
                raise KeyNotFound(f"no key with id {args.key_id!r}")
            return found.public_view()
        if args.action == "revoke":
            return (await update_key(store, args.key_id, revoked=True)).public_view()
        changes = {
            k: getattr(args, k)
            for k in ("rpm", "tpm", "monthly_token_budget", "capture_percent")
            if getattr(args, k) is not None
        }
        if args.models:
            changes["models"] = _csv(args.models)
        if args.expires_days:
            changes["expires_at"] = _expiry(args.expires_days)
        if not changes:
            raise CliError("nothing to update: give --rpm, --tpm, --budget, --models, --expires-days or --capture")
        return (await update_key(store, args.key_id, **changes)).public_view()
    finally:
        await redis.close()


async def _token(store: RedisKeyStore, settings: Settings, key_id: str) -> dict[str, Any]:
    config = jwt_from_settings(settings)
    record = await store.get(key_id)
    if record is None:
        raise KeyNotFound(f"no key with id {key_id!r}")
    if not record.is_active():
        raise CliError(f"key {key_id} is revoked or expired")
    if config is None:
        raise CliError("GATEWAY_JWT_SECRET is not set: tokens cannot be minted")
    token, ttl = mint_token(config, subject=record.id, key_id=record.id, scopes=record.scopes, models=record.models)
    return {"access_token": token, "token_type": "Bearer", "expires_in": ttl}


def render(result: dict[str, Any] | list[dict[str, Any]], as_json: bool) -> str:
    if as_json:
        return json.dumps(result, indent=2)
    if isinstance(result, list):
        rows = [_row(ApiKey.from_json(json.dumps({**r, "secret_hash": ""}))) for r in result]
        return "\n".join(rows) or "(no keys)"
    if "access_token" in result:
        return result["access_token"]
    text = _row(ApiKey.from_json(json.dumps({**{k: v for k, v in result.items() if k != "key"}, "secret_hash": ""})))
    if "key" in result:
        text += f"\n\n  {result['key']}\n\nThis is the only time the key is shown. Store it now."
    return text


def main(args: argparse.Namespace) -> int:
    try:
        result = asyncio.run(run(args, Settings()))
    except TokenInvalid as exc:
        raise CliError(str(exc)) from None
    print(render(result, args.json))
    return 0
