"""The CLI's one HTTP client for the gateway's own API (routes, the judge): aiohttp, a base URL, a key,
and the gateway's error shape turned into a `CliError` naming the status and the gateway's message.

The gateway is the one this command runs beside (`GATEWAY_URL`, default
http://127.0.0.1:$GATEWAY_PORT), so `docker compose exec gateway python -m gateway routes list` works as is.
"""

from __future__ import annotations

import json
import os
from types import TracebackType
from typing import Any

import aiohttp

from gateway.cli.errors import CliError


def default_url() -> str:
    return os.environ.get("GATEWAY_URL") or f"http://127.0.0.1:{os.environ.get('GATEWAY_PORT', '8000')}"


class GatewayClient:
    def __init__(
        self, api_key: str, *, base_url: str | None = None, timeout_s: float = 10.0, connections: int = 4
    ) -> None:
        self.base_url = (base_url or default_url()).rstrip("/")
        self._session = aiohttp.ClientSession(
            base_url=self.base_url + "/",
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            connector=aiohttp.TCPConnector(limit=connections),
            headers={"Authorization": f"Bearer {api_key}"},
        )

    async def __aenter__(self) -> GatewayClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._session.close()

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        """One request; the JSON answer, or CliError with the gateway's message (or why it was not reached)."""
        try:
            async with self._session.request(method, path.lstrip("/"), json=body) as response:
                text = await response.text()
                if response.status >= 400:
                    raise CliError(f"{response.status} {_message(text) or response.reason}")
                return _json(text)
        except aiohttp.ClientConnectionError as exc:
            raise CliError(f"cannot reach the gateway at {self.base_url}: {exc}") from None
        except TimeoutError:
            raise CliError(f"the gateway at {self.base_url} did not answer in time") from None

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /v1/chat/completions."""
        answer = await self.call("POST", "/v1/chat/completions", body)
        if not isinstance(answer, dict):
            raise CliError("the gateway's answer is not a chat completion")
        return answer


def _json(text: str) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        raise CliError(f"the gateway answered something that is not JSON: {text[:200]!r}") from None


def _message(text: str) -> str | None:
    try:
        error = _json(text).get("error", {})
    except (CliError, AttributeError):
        return None
    return error.get("message") if isinstance(error, dict) else None
