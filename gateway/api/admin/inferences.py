"""/admin/inferences: erase everything the inference log holds of one API key (privacy requests)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from gateway.api.deps import AdminDep, store
from gateway.api.responses import json_response
from gateway.errors import GatewayError
from gateway.store.queries import erase_key

router = APIRouter(prefix="/admin/inferences", tags=["admin"])


class StoreUnavailable(GatewayError):
    status = 503
    code = "store_unavailable"


@router.delete("", summary="Delete every captured inference and feedback of one key")
async def erase(
    request: Request,
    _: AdminDep,
    key_id: Annotated[str, Query(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")],
) -> Response:
    try:
        deleted = await erase_key(store(request).engine, key_id)
    except Exception as exc:  # noqa: BLE001 - the database is down: say so, and the caller retries
        store(request).failures.record("erase_key", exc)
        raise StoreUnavailable(f"the inference store is unavailable ({type(exc).__name__}); retry later") from None
    return json_response({"object": "erasure", "key_id": key_id, "deleted": deleted})
