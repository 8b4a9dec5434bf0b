"""One exception tree; each error knows its HTTP status and OpenAI error type.

    GatewayError                      (500, internal_error)
    ├── ClientError                   (4xx: the caller's mistake)
    │   ├── InvalidRequest            (400, invalid_request_error; `param` names the field)
    │   ├── Unauthorized              (401, with WWW-Authenticate)
    │   ├── Forbidden                 (403)
    │   ├── ModelNotFound             (404, model_not_found)
    │   ├── PayloadTooLarge           (413)
    │   └── RateLimited               (429, Retry-After)
    ├── BackendClientError            (backend said 4xx: passed on as is; the replica is healthy)
    ├── NoHealthyBackend              (503, Retry-After: every replica's circuit is open)
    │   └── ReplicasBusy              (503, Retry-After: every replica at its max_concurrency, queue timed out)
    └── UpstreamError                 (the replica failed: counts against its breaker, may fail over)
        ├── BackendUnavailable        (502: connect refused / reset / 5xx)
        ├── BackendOverloaded         (503: the backend's queue is full)
        ├── BackendTimeout            (504)
        └── ReplicaLacksModel         (404 from one replica: stale discovery, try another, not a breaker failure)

`error_payload` renders any of them in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import math

import orjson


class GatewayError(Exception):
    status: int = 500
    type: str = "internal_error"
    code: str | None = "internal_error"

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}


class ClientError(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class InvalidRequest(ClientError):
    pass


class Unauthorized(ClientError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"

    def __init__(self, message: str, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.headers.setdefault("WWW-Authenticate", 'Bearer realm="gateway"')


class Forbidden(ClientError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class ModelNotFound(ClientError):
    status = 404
    code = "model_not_found"


class PayloadTooLarge(ClientError):
    status = 413
    code = "payload_too_large"


class RateLimited(ClientError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class BackendClientError(GatewayError):
    """The backend rejected the request (4xx): the caller's problem, not the replica's."""

    type = "invalid_request_error"
    code = "backend_rejected"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class NoHealthyBackend(GatewayError):
    status = 503
    type = "service_unavailable"
    code = "no_healthy_backend"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))})


class ReplicasBusy(NoHealthyBackend):
    """Every replica of the model is at its `max_concurrency`, and no slot freed within the queue timeout."""

    code = "replicas_busy"


class UpstreamError(GatewayError):
    status = 502
    type = "upstream_error"
    code = "backend_unavailable"
    counts_as_failure = True


class BackendUnavailable(UpstreamError):
    pass


class BackendOverloaded(UpstreamError):
    status = 503
    code = "backend_overloaded"


class BackendTimeout(UpstreamError):
    status = 504
    code = "backend_timeout"


class ReplicaLacksModel(UpstreamError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"
    counts_as_failure = False


def error_payload(exc: GatewayError) -> dict[str, object]:
    return {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}


def error_body(exc: GatewayError) -> bytes:
    return orjson.dumps(error_payload(exc))
