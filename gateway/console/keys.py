"""Keys and usage in the browser (admins): every key with its scopes and limits, this month's share of its
token budget, and its usage this month per model (the figures GET /admin/keys, GET /v1/usage and the
budget metric give)."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from gateway.access.budget_use import BudgetUse
from gateway.api.deps import keys, limiter, usage
from gateway.console.web import PREFIX, ConsoleRoute, Viewer, page, viewer

router = APIRouter(prefix=f"{PREFIX}/keys", route_class=ConsoleRoute, include_in_schema=False)
Person = Annotated[Viewer, Depends(viewer)]


@router.get("")
async def key_list(request: Request, person: Person) -> Response:
    person.require_admin()
    records = sorted(await keys(request).list(), key=lambda k: (k.revoked, k.owner, k.name))
    used = await limiter(request).budget_used([k.id for k in records if k.monthly_token_budget])
    today = datetime.now(UTC).date()
    first = today.replace(day=1)
    views: list[dict[str, Any]] = []
    for record in records:
        per_model: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        for row in await usage(request).query(record.id, first, today):
            totals = per_model[row.model]
            totals[0] += row.requests
            totals[1] += row.input_tokens
            totals[2] += row.output_tokens
        tokens, refused = used.get(record.id, (0, False))
        budget = record.monthly_token_budget
        share = BudgetUse(record.id, record.name, record.owner, tokens, budget, refused).ratio if budget else None
        views.append(
            {
                **record.public_view(),
                "active": record.is_active(),
                "budget_used": tokens if budget else None,
                "budget_share": share,
                "usage": sorted((model, *totals) for model, totals in per_model.items()),
            }
        )
    return page(request, "keys.html", person, keys=views, month=first.strftime("%B %Y"))
