"""The console's HTTP plumbing: pages rendered from Jinja2 templates with autoescaping on (captured prompts
and answers are untrusted input: a template never marks text as markup, so it is always shown as text), the
headers every console answer carries (a Content-Security-Policy that lets a page load only the console's own
script and stylesheet, no inline script or style, no framing, nothing cached), the session cookie, the CSRF
check on every form, and errors shown as pages instead of the API's JSON."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.responses import HTMLResponse, RedirectResponse, Response

from gateway.access.principal import Principal
from gateway.access.sessions import Session, SessionStore
from gateway.api.deps import authenticator
from gateway.errors import Forbidden, GatewayError, InvalidRequest, Unauthorized
from gateway.observability.access_log import current_record

log = logging.getLogger("gateway.console")

PREFIX = "/console"
COOKIE = "slm_console"  # the session id
LOGIN_COOKIE = "slm_console_login"  # the sign-in form's CSRF token, before there is a session
MAX_FORM_FIELDS = 50
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
}

templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def as_text(value: Any) -> str:
    """Any captured value as plain text: strings as they are, anything else as indented JSON."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False, default=str)


def when(value: Any) -> str:
    """A Unix time or datetime as `YYYY-MM-DD HH:MM:SS UTC`."""
    if value is None or value == "":
        return ""
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    elif isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def share(value: float | None) -> str:
    return "" if value is None else f"{value * 100:.1f} %"


templates.filters.update(as_text=as_text, when=when, share=share)


class SignInNeeded(Exception):
    """No session, an expired one, or one whose key no longer works: to the sign-in page."""


@dataclass(frozen=True)
class Viewer:
    """The signed-in person: their key's principal and their session."""

    principal: Principal
    session: Session
    session_id: str

    @property
    def is_admin(self) -> bool:
        return "admin" in self.principal.scopes

    @property
    def who(self) -> str:
        return self.principal.key_id or self.principal.subject

    def require_admin(self) -> None:
        self.principal.require_scope("admin")


def sessions(request: Request) -> SessionStore:
    return request.app.state.sessions


def client_of(request: Request) -> str:
    return request.client.host if request.client else ""


def over_tls(request: Request) -> bool:
    """Whether the browser reached us over HTTPS (nginx, the edge, says so in X-Forwarded-Proto)."""
    return (request.headers.get("x-forwarded-proto") or request.url.scheme) == "https"


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path=PREFIX, httponly=True, samesite="strict", secure=over_tls(request)
    )


def forget_cookie(request: Request, response: Response, name: str) -> None:
    response.delete_cookie(name, path=PREFIX, httponly=True, samesite="strict", secure=over_tls(request))


async def viewer(request: Request) -> Viewer:
    """The signed-in reviewer or admin of this request (SignInNeeded otherwise)."""
    session_id = request.cookies.get(COOKIE)
    if not session_id or len(session_id) > 128:
        raise SignInNeeded
    session = await sessions(request).get(session_id)
    if session is None:
        raise SignInNeeded
    try:
        principal = await authenticator(request).holder(
            session.key_id or None, admin_digest=session.admin_digest, client=client_of(request)
        )
    except Unauthorized:
        await sessions(request).close(session_id)
        raise SignInNeeded from None
    current_record().key_id = principal.key_id
    if not principal.scopes & {"reviewer", "admin"}:
        raise Forbidden("this key has neither the 'reviewer' nor the 'admin' scope")
    person = Viewer(principal, session, session_id)
    request.state.viewer = person  # for an error page shown later in this request
    return person


def same_site(request: Request) -> bool:
    """A form posted from a page of this site. Browsers say so in Sec-Fetch-Site; where one does not, a real
    Origin must name this host (with Referrer-Policy: no-referrer a same-site post says `null`). The CSRF token
    is checked either way."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return True
    host = (request.headers.get("host") or "").rsplit(":", 1)[0].strip("[]")
    return urlsplit(origin).hostname == host


async def form_fields(request: Request, csrf: str) -> dict[str, str]:
    """The posted form's fields (the last value of each), once its CSRF token matches `csrf`."""
    if not same_site(request):
        raise Forbidden("this form was posted from another site")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise InvalidRequest("the console's forms are posted as application/x-www-form-urlencoded")
    try:
        text = (await request.body()).decode("utf-8")
        parsed = parse_qs(text, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest("the form could not be read") from None
    fields = {name: values[-1] for name, values in parsed.items()}
    if not csrf or not hmac.compare_digest(fields.get("csrf", "").encode(), csrf.encode()):
        raise Forbidden("the form is out of date or came from another page: reload it and try again")
    return fields


def page(
    request: Request, template: str, viewer: Viewer | None = None, *, status: int = 200, **context: Any
) -> HTMLResponse:
    html = templates.get_template(template).render(
        viewer=viewer,
        csrf=viewer.session.csrf if viewer else context.pop("csrf", ""),
        path=request.url.path,
        **context,
    )
    return HTMLResponse(html, status_code=status)


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _viewer(request: Request) -> Viewer | None:
    return getattr(request.state, "viewer", None)


class ConsoleRoute(APIRoute):
    """Every console handler's answer gets the console's headers; a missing sign-in goes to the sign-in
    page, and a refusal (a client's mistake, a missing scope, a store that is down) is shown as a page."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                response = await handler(request)
            except SignInNeeded:
                response = see_other(f"{PREFIX}/login")
                forget_cookie(request, response, COOKIE)
            except RequestValidationError as exc:
                problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in exc.errors())
                response = page(request, "error.html", _viewer(request), status=400, status_code=400, message=problems)
            except GatewayError as exc:
                if exc.status >= 500:
                    log.warning("console page failed: %s", exc.message)
                response = page(
                    request,
                    "error.html",
                    _viewer(request),
                    status=exc.status,
                    status_code=exc.status,
                    message=exc.message,
                )
            response.headers.update(HEADERS)
            return response

        return handle
