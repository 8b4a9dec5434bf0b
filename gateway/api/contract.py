"""The API's schema as a contract: the shared error model, the error responses each operation declares, the
request bodies of the handlers that parse their own (the OpenAI-compatible ones), links from the operations
that make an identifier to those that take it, and the schema builder that puts them together.

Validation errors leave as 400 in OpenAI's shape (gateway/api/errors.py), so the schema says 400 where
FastAPI would say 422, and every error status an operation answers names the one `ErrorResponse` model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

COMPONENTS = "#/components/schemas/{model}"


class ErrorDetail(BaseModel):
    message: str = Field(description="What was wrong, for a person.")
    type: str = Field(description="OpenAI's error type, e.g. invalid_request_error, authentication_error.")
    param: str | None = Field(description="The field or parameter at fault, when one is.")
    code: str | None = Field(description="A stable code for programs, e.g. invalid_api_key, model_not_found.")


class ErrorResponse(BaseModel):
    """Every error the gateway answers, in OpenAI's shape."""

    error: ErrorDetail


RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}
ERRORS: dict[int, tuple[str, dict[str, Any]]] = {
    400: ("Invalid request: a field or parameter outside the schema; `param` names it.", {}),
    401: (
        "No credential, or one that is unknown, revoked or expired.",
        {"WWW-Authenticate": {"description": "Bearer realm", "schema": {"type": "string"}}},
    ),
    403: ("The credential lacks the scope or model this needs.", {}),
    404: ("No such resource (key, route, adapter, model or captured inference).", {}),
    409: ("The resource changed meanwhile, or the change does not apply to its current state.", {}),
    413: ("The request body is larger than GATEWAY_MAX_BODY_BYTES.", {}),
    429: ("Over a rate limit or budget.", RETRY_AFTER),
    501: ("Not enabled on this gateway.", {}),
    502: ("A backend failed.", {}),
    503: ("A store or every backend is unavailable; retry.", RETRY_AFTER),
    504: ("A backend did not answer in time.", {}),
}
# What any authenticated operation may answer: a missing or bad credential, the wrong scope, a key over its
# requests per minute, and the key store unreachable while the caller's key is not cached.
AUTHENTICATED = (401, 403, 429, 503)
WITH_BODY = (400, 413)


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status with the shared error model."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in sorted(set(statuses)):
        description, headers = ERRORS[status]
        out[status] = {"model": ErrorResponse, "description": description, **({"headers": headers} if headers else {})}
    return out


def ok(response: dict[str, Any], status: int = 200) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a success: `{"model": ..., "description": ..., "links": ...}` under `status`."""
    return {status: response}


def link(operation_id: str, description: str, **parameters: str) -> dict[str, Any]:
    """An OpenAPI link: call `operation_id` with `parameters` (runtime expressions such as
    `$response.body#/id` or `$request.path.name`)."""
    return {"operationId": operation_id, "parameters": parameters, "description": description}


def schema_ref(model: type[BaseModel]) -> dict[str, str]:
    """A reference to `model`'s schema, which the builder puts among the components."""
    _BODY_MODELS[model.__name__] = model
    return {"$ref": COMPONENTS.format(model=model.__name__)}


def json_body(model: type[BaseModel], description: str) -> dict[str, Any]:
    """`openapi_extra=` for a handler that parses its own body (`parse_body`): the schema of the model that
    validates it, so the schema and the refusals come from one model."""
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/json": {"schema": schema_ref(model)}},
        }
    }


_BODY_MODELS: dict[str, type[BaseModel]] = {}
SchemaHook = Callable[[dict[str, Any]], None]
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "An API key (sk-...) or a JWT."},
    "api_key": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "An API key (sk-...)."},
}


def install_schema(app: FastAPI, *, adjust: SchemaHook | None = None) -> None:
    """app.openapi() builds the contract once: 400 instead of FastAPI's 422, the self-parsed bodies'
    models among the components, and `adjust` (the deployment's own bounds) applied last."""

    def build() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        if _BODY_MODELS:
            models = [(m, "validation") for m in _BODY_MODELS.values()]
            _, defs = models_json_schema(models, ref_template=COMPONENTS)  # type: ignore[arg-type]
            for name, definition in defs.get("$defs", {}).items():
                components.setdefault(name, definition)
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.get("responses", {})
                responses.pop("422", None)
                if operation.get("parameters") or operation.get("requestBody"):
                    responses.setdefault("400", _error_response(400))
                operation["responses"] = dict(sorted(responses.items()))
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        schema["components"]["securitySchemes"] = SECURITY_SCHEMES
        schema["security"] = [{"bearer": []}, {"api_key": []}]
        if adjust is not None:
            adjust(schema)
        app.openapi_schema = schema
        return schema

    app.openapi = build  # type: ignore[method-assign]


def output_cap(max_output_tokens: int) -> SchemaHook:
    """The deployment's cap on generated tokens (GATEWAY_MAX_OUTPUT_TOKENS) as the schema's maximum of
    max_tokens and max_completion_tokens: the bound gateway/access/bounds.py refuses above."""

    def adjust(schema: dict[str, Any]) -> None:
        components = schema.get("components", {}).get("schemas", {})
        for model in ("ChatCompletionRequest", "CompletionRequest"):
            properties = components.get(model, {}).get("properties", {})
            for name in ("max_tokens", "max_completion_tokens"):
                for variant in properties.get(name, {}).get("anyOf", []):
                    if variant.get("type") == "integer":
                        variant["maximum"] = min(variant.get("maximum", max_output_tokens), max_output_tokens)

    return adjust


def _error_response(status: int) -> dict[str, Any]:
    return {
        "description": ERRORS[status][0],
        "content": {"application/json": {"schema": {"$ref": COMPONENTS.format(model="ErrorResponse")}}},
    }


def operation_id(route: APIRoute) -> str:
    """Operation ids are the routes' names (stable, short: a generated client's method names)."""
    return route.name
