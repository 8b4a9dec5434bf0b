"""/admin/keys: create, list, show, update limits, revoke (admin scope only). Secrets never listed."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.responses import Response

from gateway.access.keys import (
    MAX_EXPIRES_AT,
    MAX_MONTHLY_TOKENS,
    MAX_RPM,
    MAX_TPM,
    KeyNotFound,
    KeySpec,
    update_key,
)
from gateway.api.contract import AUTHENTICATED, WITH_BODY, errors, link, ok
from gateway.api.deps import AdminDep, key_lookup, keys
from gateway.api.responses import json_response
from gateway.protocol.identifiers import KEY_ID_PATTERN, MODEL_NAME_PATTERN

router = APIRouter(prefix="/admin/keys", tags=["admin"], responses=errors(*AUTHENTICATED))

MAX_EXPIRES_IN_DAYS = 20_000  # about 55 years: the expiry stays before MAX_EXPIRES_AT
MAX_MODELS = 100
# A label a person reads: printable, no surrounding spaces.
LABEL_PATTERN = r"^[^\s\x00-\x1f\x7f]([^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f])?$"
Scope = Literal["inference", "reviewer", "admin"]
ModelName = Annotated[str, Field(min_length=1, max_length=256, pattern=MODEL_NAME_PATTERN)]
KeyId = Annotated[str, Path(pattern=KEY_ID_PATTERN, description="The key's id (`id` in its record).")]


class KeyLimitsBody(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    models: list[ModelName] | None = Field(None, max_length=MAX_MODELS, description="Allowed models; null = all.")
    rpm: int | None = Field(None, ge=1, le=MAX_RPM, description="Requests per minute; null = unlimited.")
    tpm: int | None = Field(None, ge=1, le=MAX_TPM, description="Tokens per minute; null = unlimited.")
    monthly_token_budget: int | None = Field(
        None, ge=1, le=MAX_MONTHLY_TOKENS, description="Tokens per calendar month (UTC); null = unlimited."
    )
    expires_at: float | None = Field(
        None,
        gt=0,
        le=MAX_EXPIRES_AT,
        description="Unix time after which the key stops working; in the future, at most 2100-01-01. null = never.",
    )
    capture_percent: float | None = Field(
        None,
        ge=0,
        le=100,
        description="Share of this key's answers kept in "
        "the inference log, in percent; null = the gateway's settings decide.",
    )

    @field_validator("expires_at")
    @classmethod
    def _in_the_future(cls, v: float | None) -> float | None:
        if v is not None and v <= time.time():
            raise ValueError("must be in the future (a Unix time in seconds); revoke a key to stop it now")
        return v


class CreateKeyBody(KeyLimitsBody):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"name": "search-bot", "owner": "search", "rpm": 600, "tpm": 100_000}]}
    )

    name: str = Field(min_length=1, max_length=100, pattern=LABEL_PATTERN)
    owner: str = Field("", max_length=100, pattern=r"^$|" + LABEL_PATTERN)
    scopes: list[Scope] = Field(default_factory=lambda: ["inference"], max_length=3)  # type: ignore[arg-type]
    expires_in_days: float | None = Field(
        None, gt=0, le=MAX_EXPIRES_IN_DAYS, description="Alternative to expires_at: days from now."
    )


class UpdateKeyBody(KeyLimitsBody):
    """Only the fields sent change. A limit, models, expires_at or capture_percent sent as null is removed;
    name, owner and scopes cannot be null."""

    name: str = Field(None, min_length=1, max_length=100, pattern=LABEL_PATTERN)  # type: ignore[assignment]
    owner: str = Field(None, max_length=100, pattern=r"^$|" + LABEL_PATTERN)  # type: ignore[assignment]
    scopes: list[Scope] = Field(None, max_length=3)  # type: ignore[arg-type]


class KeyView(BaseModel):
    """A key's record as the admin API shows it (never its secret or hash)."""

    id: str
    name: str
    owner: str
    created_at: float
    scopes: list[str]
    models: list[str] | None
    expires_at: float | None
    rpm: int | None
    tpm: int | None
    monthly_token_budget: int | None
    revoked: bool
    capture_percent: float | None


class CreatedKey(KeyView):
    key: str = Field(description="The plain key (sk-...): in this answer only.")


class KeyList(BaseModel):
    object: Literal["list"]
    data: list[KeyView]


KEY_LINKS = {
    "ShowKey": link("show_key", "The key just made.", key_id="$response.body#/id"),
    "UpdateKey": link("update_key", "Change its limits.", key_id="$response.body#/id"),
    "RevokeKey": link("revoke_key", "Revoke it.", key_id="$response.body#/id"),
}


@router.post(
    "",
    status_code=201,
    summary="Create a key; the plain key is in this answer only",
    responses=ok({"model": CreatedKey, "description": "The key, with its secret.", "links": KEY_LINKS}, 201)
    | errors(*WITH_BODY),
)
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


@router.get("", summary="List keys (no secrets)", responses=ok({"model": KeyList, "description": "Every key."}))
async def list_keys(request: Request, _: AdminDep) -> Response:
    records = await keys(request).list()
    return json_response({"object": "list", "data": [r.public_view() for r in records]})


@router.get("/{key_id}", summary="Show one key (no secret)", responses=ok({"model": KeyView}) | errors(400, 404))
async def show_key(request: Request, key_id: KeyId, _: AdminDep) -> Response:
    record = await keys(request).get(key_id)
    if record is None:
        raise KeyNotFound(f"no key with id {key_id!r}")
    return json_response(record.public_view())


@router.patch(
    "/{key_id}",
    name="update_key",
    summary="Change a key's limits, models, scopes or expiry",
    responses=ok({"model": KeyView}) | errors(*WITH_BODY, 404),
)
async def update(request: Request, key_id: KeyId, body: UpdateKeyBody, _: AdminDep) -> Response:
    changes = body.model_dump(exclude_unset=True)
    record = await update_key(keys(request), key_id, **changes)
    key_lookup(request).forget(record)
    return json_response(record.public_view())


@router.delete(
    "/{key_id}",
    name="revoke_key",
    summary="Revoke a key (kept for the record, refused from now on)",
    responses=ok({"model": KeyView}) | errors(400, 404),
)
async def revoke(request: Request, key_id: KeyId, _: AdminDep) -> Response:
    record = await update_key(keys(request), key_id, revoked=True)
    key_lookup(request).forget(record)
    return json_response(record.public_view())
