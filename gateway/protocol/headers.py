"""What the inference path reads of a request besides its body: a few headers, taken from the ASGI scope
in one pass (no Starlette `Headers` object is built on the hot path), and the caller's address."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import Scope


@dataclass(slots=True)
class RequestHeaders:
    authorization: str | None = None
    api_key: str | None = None  # X-API-Key
    cache_control: str | None = None
    cache_choice: str | None = None  # X-Gateway-Cache: on | off
    variant: str | None = None  # X-Gateway-Variant: pin a route's variant (admin scope)
    client: str = "-"  # the caller's address (the forwarded one when uvicorn trusts the proxy)

    @classmethod
    def of(cls, scope: Scope) -> RequestHeaders:
        address = scope.get("client")
        found = cls(client=address[0] if address else "-")
        for name, value in scope["headers"]:
            attribute = _WANTED.get(name)
            if attribute is not None and getattr(found, attribute) is None:  # the first value counts
                setattr(found, attribute, value.decode("latin-1"))
        return found


_WANTED = {
    b"authorization": "authorization",
    b"x-api-key": "api_key",
    b"cache-control": "cache_control",
    b"x-gateway-cache": "cache_choice",
    b"x-gateway-variant": "variant",
}
