"""The console's stylesheet and script, shipped in the package and served from memory: no CDN, nothing
fetched at run time, and only these two names are served."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from starlette.responses import Response

from gateway.console.web import PREFIX, ConsoleRoute
from gateway.errors import ClientError

HERE = Path(__file__).parent / "static"
ASSETS = {
    "console.css": ((HERE / "console.css").read_bytes(), "text/css; charset=utf-8"),
    "console.js": ((HERE / "console.js").read_bytes(), "text/javascript; charset=utf-8"),
}

router = APIRouter(prefix=f"{PREFIX}/static", route_class=ConsoleRoute, include_in_schema=False)


class AssetNotFound(ClientError):
    status = 404
    code = "not_found"


@router.get("/{name}")
async def asset(name: str) -> Response:
    if name not in ASSETS:
        raise AssetNotFound(f"no console asset named {name!r}")
    body, kind = ASSETS[name]
    return Response(body, media_type=kind)
