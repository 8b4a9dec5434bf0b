"""GET /v1/usage: tokens and requests per model and day, with the hosted-API cost and break-even.

Callers see their own key; the admin scope may ask for any key with `key_id`.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from gateway.api.contract import AUTHENTICATED, errors
from gateway.api.deps import PrincipalDep, prices, usage
from gateway.api.responses import json_response
from gateway.errors import InvalidRequest
from gateway.protocol.identifiers import KEY_ID_PATTERN

router = APIRouter(prefix="/v1", tags=["usage"])


def _day(value: str | None, default: date, name: str) -> date:
    if value is None:
        return default
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"{name} must be a date like 2026-01-31", param=name) from None


DAY = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"


@router.get(
    "/usage",
    summary="Usage and hosted-API cost estimate per model and day",
    responses=errors(*AUTHENTICATED, 400),
)
async def usage_report(
    request: Request,
    principal: PrincipalDep,
    start: Annotated[
        str | None, Query(pattern=DAY, description="First day (UTC), YYYY-MM-DD; default 29 days ago.")
    ] = None,
    end: Annotated[str | None, Query(pattern=DAY, description="Last day (UTC), YYYY-MM-DD; default today.")] = None,
    key_id: Annotated[
        str | None, Query(pattern=KEY_ID_PATTERN, description="Another key's usage (admin scope).")
    ] = None,
) -> Response:
    own = principal.key_id or principal.subject
    if key_id is not None and key_id != own:
        principal.require_scope("admin")
    today = datetime.now(UTC).date()
    first = _day(start, today - timedelta(days=29), "start")
    last = _day(end, today, "end")
    try:
        rows = await usage(request).query(key_id or own, first, last)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    table = prices(request)
    data, requests, tokens_in, tokens_out, cost = [], 0, 0, 0, 0.0
    for row in rows:
        row_cost = table.hosted_cost(row.model, row.input_tokens, row.output_tokens)
        data.append(
            {
                "date": row.day,
                "model": row.model,
                "requests": row.requests,
                "input_tokens": row.input_tokens,
                "output_tokens": row.output_tokens,
                "hosted_api_cost_usd": round(row_cost, 8),
            }
        )
        requests, tokens_in, tokens_out, cost = (
            requests + row.requests,
            tokens_in + row.input_tokens,
            tokens_out + row.output_tokens,
            cost + row_cost,
        )
    return json_response(
        {
            "object": "usage",
            "key_id": key_id or own,
            "start": first.isoformat(),
            "end": last.isoformat(),
            "data": data,
            "totals": {
                "requests": requests,
                "input_tokens": tokens_in,
                "output_tokens": tokens_out,
                "hosted_api_cost_usd": round(cost, 8),
            },
            "break_even": table.break_even(cost, requests),
        }
    )
