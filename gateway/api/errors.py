"""Every error leaves in OpenAI's shape ({"error": {"message", "type", "param", "code"}}); nothing the
client did produces a 500 or a traceback."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from opentelemetry import trace
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from gateway.errors import ClientError, GatewayError, InvalidRequest, PayloadTooLarge, error_body
from gateway.protocol.requests import first_error

log = logging.getLogger("gateway")


def error_response(exc: BaseException) -> Response:
    """The response for any exception that reached the edge: a GatewayError in its own shape; anything
    else is our bug, logged with its traceback and answered as a bare 500 (no detail leaks out)."""
    if not isinstance(exc, GatewayError):
        log.error("unhandled error", exc_info=exc)
        trace.get_current_span().record_exception(exc)  # a no-op unless tracing is on
        exc = GatewayError("internal error; see the gateway log for the request id")
    return Response(error_body(exc), status_code=exc.status, media_type="application/json", headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def gateway_error(_: Request, exc: GatewayError) -> Response:
        return error_response(exc)

    @app.exception_handler(Exception)  # our bug: logged with its traceback, answered as a bare 500
    async def unexpected(_: Request, exc: Exception) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        field, message = first_error(list(exc.errors()))
        return error_response(InvalidRequest(f"{field or 'request'}: {message}", param=field))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 413:  # the body cap (gateway/api/middleware/body_limit.py)
            return error_response(PayloadTooLarge(str(exc.detail)))
        err = ClientError(str(exc.detail), code="not_found" if exc.status_code == 404 else None)
        err.status = exc.status_code
        return error_response(err)
