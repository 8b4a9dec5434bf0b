"""Signing in and out: an API key (a reviewer's or an admin's), posted once from the sign-in form, is
exchanged for a session; the browser keeps only the session's random id in an HttpOnly, SameSite=Strict
cookie (Secure behind TLS). The key itself is never put in a URL, a page or a cookie."""

from __future__ import annotations

import hmac
import secrets

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.access.authenticate import credential_digest
from gateway.access.keys import KEY_PREFIX
from gateway.access.principal import BOOTSTRAP_ADMIN
from gateway.api.deps import authenticator
from gateway.console.web import (
    COOKIE,
    LOGIN_COOKIE,
    PREFIX,
    ConsoleRoute,
    SignInNeeded,
    client_of,
    forget_cookie,
    form_fields,
    page,
    see_other,
    sessions,
    set_cookie,
    viewer,
)
from gateway.errors import Forbidden, Unauthorized

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)
LOGIN_FORM_S = 1800  # how long a sign-in form stays usable


def _sign_in_form(request: Request, *, status: int = 200, error: str | None = None) -> Response:
    token = secrets.token_urlsafe(32)
    response = page(request, "login.html", status=status, csrf=token, error=error)
    set_cookie(request, response, LOGIN_COOKIE, token, LOGIN_FORM_S)
    return response


@router.get("")
@router.get("/")
async def home(request: Request) -> Response:
    return see_other(f"{PREFIX}/review")


@router.get("/login")
async def sign_in_form(request: Request) -> Response:
    try:
        await viewer(request)
    except (SignInNeeded, Forbidden):
        return _sign_in_form(request)
    return see_other(f"{PREFIX}/review")


@router.post("/login")
async def sign_in(request: Request) -> Response:
    fields = await form_fields(request, request.cookies.get(LOGIN_COOKIE, ""))
    key = fields.get("key", "").strip()
    auth = authenticator(request)
    try:
        principal = await auth.principal(key or None, client=client_of(request))
    except Unauthorized:
        return _sign_in_form(request, status=401, error="That key was not accepted.")
    admin = principal is BOOTSTRAP_ADMIN and hmac.compare_digest(key.encode(), (auth.admin_key or "").encode())
    if not auth.open_locally and not admin and not key.startswith(KEY_PREFIX):
        return _sign_in_form(request, status=401, error="Sign in with an API key (sk-...), not a token.")
    if not principal.scopes & {"reviewer", "admin"}:
        return _sign_in_form(request, status=403, error="This key has neither the reviewer nor the admin scope.")
    key_id = "" if auth.open_locally else principal.key_id or ""
    store = sessions(request)
    session_id, _ = await store.open(key_id, admin_digest=credential_digest(key) if admin else None)
    response = see_other(f"{PREFIX}/review")
    set_cookie(request, response, COOKIE, session_id, int(store.lifetime_s))
    forget_cookie(request, response, LOGIN_COOKIE)
    return response


@router.post("/logout")
async def sign_out(request: Request) -> Response:
    try:
        person = await viewer(request)
    except (SignInNeeded, Forbidden):
        return see_other(f"{PREFIX}/login")
    await form_fields(request, person.session.csrf)
    await sessions(request).close(person.session_id)
    response = see_other(f"{PREFIX}/login")
    forget_cookie(request, response, COOKIE)
    return response
