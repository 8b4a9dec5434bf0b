"""The console's stylesheet and script, shipped in the package and served by Starlette's StaticFiles from
that folder: no CDN, nothing fetched at run time. Every answer, a missing file's included, carries the
console's headers (its Content-Security-Policy, nosniff, no-store)."""

from __future__ import annotations

from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.responses import PlainTextResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from gateway.console.web import HEADERS, PREFIX

MOUNT = f"{PREFIX}/static"


class ConsoleAssets(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        try:
            response = await super().get_response(path, scope)
        except HTTPException as exc:
            response = PlainTextResponse(exc.detail, status_code=exc.status_code, headers=exc.headers)
        response.headers.update(HEADERS)
        return response


files = ConsoleAssets(directory=Path(__file__).parent / "static")
