"""The database URL, the async engine, and migrations applied by one process at a time.

`DATABASE_URL` unset: an embedded SQLite file (`GATEWAY_SQLITE_PATH`), for one process in development.
`postgres://` / `postgresql://` URLs get the asyncpg driver. Migrations run at start-up: on Postgres
under a transaction-scoped advisory lock, so replicas starting together apply them once and the others
find the schema current; `python -m gateway migrate` does the same as a one-shot command.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gateway.settings.store import StoreSettings

log = logging.getLogger("gateway.store")

MIGRATIONS = Path(__file__).parent / "migrations"
# Any constant: the lock only has to be the same number in every replica.
MIGRATION_LOCK_ID = 0x5_1_9_1_9


def async_url(database_url: str | None, sqlite_path: str = "gateway.db") -> str:
    """The SQLAlchemy async URL for a DATABASE_URL as operators write it (or the embedded SQLite file)."""
    if not database_url:
        return f"sqlite+aiosqlite:///{sqlite_path}"
    url = make_url(database_url)
    if url.drivername in ("postgres", "postgresql", "postgresql+psycopg2", "postgresql+psycopg"):
        url = url.set(drivername="postgresql+asyncpg")
    elif url.drivername == "sqlite":
        url = url.set(drivername="sqlite+aiosqlite")
    return url.render_as_string(hide_password=False)


def url_from_settings(settings: StoreSettings) -> str:
    """The async URL of the database these settings name (the SQLite default's folder made if missing)."""
    if not settings.database_url:
        ensure_sqlite_folder(settings.sqlite_path)
    return async_url(settings.database_url.get_secret_value() if settings.database_url else None, settings.sqlite_path)


def ensure_sqlite_folder(sqlite_path: str) -> None:
    """The default file's folder may not exist yet; an unwritable one is logged (the gateway then serves
    without its store, as when a database is down) rather than stopping the process."""
    if sqlite_path == ":memory:":
        return
    try:
        Path(sqlite_path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning({"event": "sqlite_folder_unavailable", "path": sqlite_path, "error": str(exc)})


def create_engine(url: str, *, connect_timeout_s: float = 5.0, pool_size: int = 5) -> AsyncEngine:
    """An engine that connects lazily (nothing is opened here)."""
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": connect_timeout_s})

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # readers (feedback, judge) do not block the writer
            cur.close()

        return engine
    # pool_pre_ping: after a database restart, stale pooled connections are replaced, not handed out.
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_timeout=connect_timeout_s,
        connect_args={"timeout": connect_timeout_s, "command_timeout": 30},
    )


def _config(connection: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def migrate(engine: AsyncEngine, revision: str = "head") -> str | None:
    """Upgrade to `revision` (idempotent); returns the revision the database is at afterwards."""
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Held until this transaction ends; Postgres' DDL is transactional, so the upgrade commits with it.
            await conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
        before = await conn.run_sync(current_revision)
        await conn.run_sync(lambda c: command.upgrade(_config(c), revision))
        after = await conn.run_sync(current_revision)
    if before != after:
        log.info({"event": "migrated", "from": before, "to": after})
    return after


async def downgrade(engine: AsyncEngine, revision: str) -> str | None:
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: command.downgrade(_config(c), revision))
        return await conn.run_sync(current_revision)
