"""Migrations on SQLite and a real Postgres: from empty to head, from the previous revision to head
(rows kept), idempotent, and concurrent start-ups applying them once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store.db import async_url, create_engine, head_revision, migrate
from gateway.store.queries import add_feedback, feedback_of


async def _tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def test_upgrade_from_empty(engine: AsyncEngine) -> None:
    assert await _tables(engine) == set()
    assert await migrate(engine) == head_revision()
    assert {"inferences", "feedback", "judge_runs", "alembic_version"} <= await _tables(engine)
    assert await migrate(engine) == head_revision()  # a second start-up changes nothing


async def test_upgrade_from_previous_revision_keeps_rows(engine: AsyncEngine) -> None:
    assert await migrate(engine, "0001") == "0001"
    assert "judge_runs" not in await _tables(engine)
    async with engine.begin() as conn:  # a row as the first revision wrote it
        await conn.execute(
            text("INSERT INTO feedback (request_id, created_at, kind, value) VALUES (:r, :at, 'rating', 1.0)"),
            {"r": "r-old", "at": datetime(2024, 1, 1, tzinfo=UTC)},
        )
    assert await migrate(engine) == head_revision() != "0001"
    assert "judge_runs" in await _tables(engine)
    kept = await feedback_of(engine, "r-old")
    assert [(f["kind"], f["value"], f["role"]) for f in kept] == [("rating", 1.0, None)]
    await add_feedback(engine, request_id="r-new", kind="rating", value=0.0, role="owner")
    assert [f["role"] for f in await feedback_of(engine, "r-new")] == ["owner"]


async def test_replicas_starting_together_migrate_once(database_url: str) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("the embedded SQLite default serves one process; the advisory lock is Postgres'")
    engines = [create_engine(async_url(database_url)) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(e) for e in engines))
        assert results == [head_revision()] * 4
        async with engines[0].connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM alembic_version"))).scalar_one() == 1
    finally:
        for e in engines:
            await e.dispose()
