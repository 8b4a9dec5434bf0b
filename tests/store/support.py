"""Helpers for the store tests: a gateway process wired to a database, and reads of what it stored."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store.db import async_url, create_engine
from gateway.store.schema import feedback, inferences
from testkit.processes import Service
from tests.support.gateway import ADMIN_KEY, start_gateway

MODEL = "smollm2:135m"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
T = TypeVar("T")


def on_db(url: str, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Run `work` against the database at `url` (a DATABASE_URL), from a synchronous test."""

    async def run() -> T:
        engine = create_engine(async_url(url))
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def inference_rows(url: str) -> list[dict[str, Any]]:
    async def read(engine: AsyncEngine) -> list[dict[str, Any]]:
        async with engine.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(select(inferences).order_by(inferences.c.id))]

    return on_db(url, read)


def feedback_rows(url: str) -> list[dict[str, Any]]:
    async def read(engine: AsyncEngine) -> list[dict[str, Any]]:
        async with engine.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(select(feedback).order_by(feedback.c.id))]

    return on_db(url, read)


def gateway_on(double: Service, database_url: str, **env: str) -> Service:
    return start_gateway([("ollama", double.url)], env={"DATABASE_URL": database_url, **env})


def create_key(
    gateway: Service, name: str = "capture-test", scopes: tuple[str, ...] = ("inference",)
) -> tuple[str, str]:
    """(plain key, key id) made through the admin API."""
    body = {"name": name, "scopes": list(scopes)}
    response = httpx.post(f"{gateway.url}/admin/keys", json=body, headers=ADMIN, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()["key"], response.json()["id"]


def chat(gateway: Service, key: str, content: str, *, model: str = MODEL, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 8, **extra}
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=20
    )
    assert response.status_code == 200, response.text
    return response
