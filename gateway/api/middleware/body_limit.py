"""Request bodies are capped: 413 in OpenAI's error shape, by Content-Length or as soon as a chunked
body passes the cap (nothing more of it is read)."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api.errors import error_response
from gateway.errors import PayloadTooLarge


def declared_length(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cap = self.max_body_bytes
        if declared_length(scope) > cap:
            await error_response(PayloadTooLarge(f"request body exceeds {cap} bytes"))(scope, receive, send)
            return
        seen = 0

        async def capped_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > cap:  # an HTTPException, which FastAPI's body parsing lets through to the 413 handler
                raise HTTPException(413, f"request body exceeds {cap} bytes")
            return message

        await self.app(scope, capped_receive, send)
