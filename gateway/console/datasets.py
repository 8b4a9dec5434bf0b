"""Datasets in the browser: per route, the corrections and rated answers collected since its last trained
version went out (the route's last promotion; everything when it never had one), and the download of the
JSONL `python -m trainer dataset --route NAME --since ...` writes from them: the same rows, chosen by the
same code (gateway/protocol/training_rows.py) with the trainer's defaults."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from gateway.api.admin.inferences import unavailable
from gateway.api.admin.routes import RouteName
from gateway.api.deps import route_store, store
from gateway.console.web import PREFIX, ConsoleRoute, Viewer, page, viewer
from gateway.protocol.training_rows import Example, build, jsonl
from gateway.store.queries import export_rows

router = APIRouter(prefix=f"{PREFIX}/datasets", route_class=ConsoleRoute, include_in_schema=False)
Person = Annotated[Viewer, Depends(viewer)]
MIN_SCORE, HELDOUT = 0.8, 0.1  # `trainer dataset`'s defaults


async def _since(request: Request, route: str) -> datetime | None:
    """When the route's current version took all its traffic: its last promotion, manual or by the guard."""
    for entry in await route_store(request).history(route):
        if entry.get("why") == "promote":
            return datetime.fromtimestamp(entry["at"], UTC)
    return None


async def _collected(
    request: Request, route: str
) -> tuple[datetime | None, list[Example], list[Example], dict[str, Any]]:
    since = await _since(request, route)
    try:
        rows = [row async for row in export_rows(store(request).engine, route=route, since=since)]
    except Exception as exc:  # noqa: BLE001 - the database is down: say so
        raise unavailable(request, "console_dataset", exc) from None
    train, held, report = build(rows, min_score=MIN_SCORE, heldout=HELDOUT)
    return since, train, held, report


@router.get("")
async def datasets(request: Request, person: Person) -> Response:
    views = []
    for name in sorted(await route_store(request).all()):
        since, train, held, report = await _collected(request, name)
        views.append({"route": name, "since": since, "train": len(train), "heldout": len(held), "report": report})
    return page(request, "datasets.html", person, routes=views, min_score=MIN_SCORE, heldout=HELDOUT)


@router.get("/{name}/{part}.jsonl")
async def download(request: Request, person: Person, name: RouteName, part: Literal["train", "heldout"]) -> Response:
    await route_store(request).get(name)  # 404 for an unknown route
    since, train, held, _ = await _collected(request, name)
    stamp = since.strftime("%Y%m%dT%H%M%SZ") if since else "all"
    return Response(
        "".join(jsonl(train if part == "train" else held)),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="{name}-{stamp}-{part}.jsonl"'},
    )
