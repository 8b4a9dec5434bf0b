"""Store fixtures: one real Postgres per session, a fresh database per test, or a fresh SQLite file; the
Ollama double and a Redis the store tests' gateways share within a module."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store.db import async_url, create_engine
from testkit.ollama import running_ollama_double
from testkit.processes import Service, redis_service
from tests.support.postgres import Postgres, running_postgres

_names = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    with running_postgres() as pg:
        yield pg


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A DATABASE_URL as an operator writes it, for an empty database (both dialects)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    pg: Postgres = request.getfixturevalue("postgres")
    return pg.create_database(f"t{next(_names)}")


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(async_url(database_url))
    yield eng
    await eng.dispose()


@pytest.fixture(scope="module")
def double() -> Iterator[Service]:
    with running_ollama_double(tokens=8) as service:
        yield service


@pytest.fixture(scope="module")
def redis() -> Iterator[Service]:
    """Keys and routes shared by a module's gateways (and kept across a gateway's restart)."""
    service = redis_service().start().wait_port()
    yield service
    service.stop()
