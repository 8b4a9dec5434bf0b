"""/admin/keys: create, list, show, update limits, revoke (admin scope only). Secrets never listed."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from gateway.access.keys import KeyNotFound, KeySpec, update_key
from gateway.api.deps import AdminDep, key_lookup, keys
from gateway.api.responses import json_response

router = APIRouter(prefix="/admin/keys", tags=["admin"])


class KeyLimitsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[str] | None = Field(None, description="Allowed models; null = all.")
    rpm: int | None = Field(None, ge=1, description="Requests per minute; null = unlimited.")
    tpm: int | None = Field(None, ge=1, description="Tokens per minute; null = unlimited.")
    monthly_token_budget: int | None = Field(None, ge=1, description="Tokens per calendar month (UTC).")
    expires_at: float | None = Field(None, description="Unix time after which the key stops working.")
    capture_percent: float | None = Field(
        None,
        ge=0,
        le=100,
        description="Share of this key's answers kept in "
        "the inference log, in percent; null = the gateway's settings decide.",
    )


class CreateKeyBody(KeyLimitsBody):
    name: str = Field(min_length=1, max_length=100)
    owner: str = Field("", max_length=100)
    scopes: list[str] = Field(default_factory=lambda: ["inference"])
    expires_in_days: float | None = Field(None, gt=0, description="Alternative to expires_at.")


class UpdateKeyBody(KeyLimitsBody):
    name: str | None = Field(None, min_length=1, max_length=100)
    owner: str | None = Field(None, max_length=100)
    scopes: list[str] | None = None


@router.post("", status_code=201, summary="Create a key; the plain key is in this answer only")
async def create_key(request: Request, body: CreateKeyBody, _: AdminDep) -> Response:
    expires = body.expires_at or (time.time() + body.expires_in_days * 86400 if body.expires_in_days else None)
    spec = KeySpec(
        name=body.name,
        owner=body.owner,
        scopes=frozenset(body.scopes),
        models=tuple(body.models) if body.models is not None else None,
        expires_at=expires,
        rpm=body.rpm,
        tpm=body.tpm,
        monthly_token_budget=body.monthly_token_budget,
        capture_percent=body.capture_percent,
    )
    record, secret = await keys(request).create(spec)
    return json_response({"key": secret, **record.public_view()}, status_code=201)


@router.get("", summary="List keys (no secrets)")
async def list_keys(request: Request, _: AdminDep) -> Response:
    records = await keys(request).list()
    return json_response({"object": "list", "data": [r.public_view() for r in records]})


@router.get("/{key_id}", summary="Show one key (no secret)")
async def show_key(request: Request, key_id: str, _: AdminDep) -> Response:
    record = await keys(request).get(key_id)
    if record is None:
        raise KeyNotFound(f"no key with id {key_id!r}")
    return json_response(record.public_view())


@router.patch("/{key_id}", summary="Change a key's limits, models, scopes or expiry")
async def update(request: Request, key_id: str, body: UpdateKeyBody, _: AdminDep) -> Response:
    changes = body.model_dump(exclude_unset=True)
    record = await update_key(keys(request), key_id, **changes)
    key_lookup(request).forget(record)
    return json_response(record.public_view())


@router.delete("/{key_id}", summary="Revoke a key (kept for the record, refused from now on)")
async def revoke(request: Request, key_id: str, _: AdminDep) -> Response:
    record = await update_key(keys(request), key_id, revoked=True)
    key_lookup(request).forget(record)
    return json_response(record.public_view())
