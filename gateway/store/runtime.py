"""The store's long-lived part in a gateway process: the engine, migrations at start-up, the capture
writer, and the periodic job (retention, judge gauges).

The gateway serves whether or not the database is reachable: a start-up migration that fails is
retried in the background, and capture starts writing once the schema is there (until then the
queue fills and drops, counted).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.background import cancel_and_wait, every
from gateway.observability.failures import FailureLog
from gateway.observability.metrics import GatewayMetrics
from gateway.settings.store import StoreSettings
from gateway.store.db import async_url, create_engine, ensure_sqlite_folder, migrate
from gateway.store.queries import judge_levels, purge_before
from gateway.store.writer import CaptureWriter

log = logging.getLogger("gateway.store")
MIGRATE_TIMEOUT_S = 30.0


class StoreRuntime:
    def __init__(self, settings: StoreSettings, metrics: GatewayMetrics, failures: FailureLog) -> None:
        url = settings.database_url.get_secret_value() if settings.database_url else None
        self.url = async_url(url, settings.sqlite_path)
        self.sqlite_path = None if url else settings.sqlite_path
        if self.sqlite_path is not None:
            ensure_sqlite_folder(self.sqlite_path)
            # Which file this process uses, so two processes that disagree are easy to spot.
            log.info({"event": "store", "database": "sqlite", "path": self.sqlite_path})
        self.settings = settings
        self.metrics = metrics
        self.failures = failures
        self.engine: AsyncEngine = create_engine(self.url)
        self.writer = CaptureWriter(
            self.engine,
            metrics,
            failures,
            capacity=settings.capture_queue,
            batch_size=settings.capture_batch,
            retry_s=settings.capture_retry_s,
        )
        self.ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Migrate (bounded wait), then write; on failure keep retrying in the background."""
        if self.settings.migrate_on_start:
            try:
                async with asyncio.timeout(MIGRATE_TIMEOUT_S):
                    await self.migrate()
            except Exception as exc:  # noqa: BLE001 - the gateway serves without its store meanwhile
                self.failures.record("store_migrate", exc, retry_s=self.settings.capture_retry_s)
        else:
            self.ready.set()
        self._tasks.append(asyncio.create_task(self._until_ready(), name="store-start"))

    async def migrate(self) -> None:
        """Postgres serialises replicas with an advisory lock (db.migrate); SQLite processes on one host
        (GATEWAY_WORKERS) with a lock file beside the database."""
        if self.sqlite_path is None or self.sqlite_path == ":memory:":  # Postgres, or a database of this process
            await migrate(self.engine)
        else:
            lock_path = Path(self.sqlite_path).with_name(Path(self.sqlite_path).name + ".lock")
            with open(lock_path, "a") as lock:
                await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
                try:
                    await migrate(self.engine)
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
        self.ready.set()

    async def _until_ready(self) -> None:
        while not self.ready.is_set():
            await asyncio.sleep(self.settings.capture_retry_s)
            try:
                await self.migrate()
            except Exception as exc:  # noqa: BLE001 - retried until the database is there
                self.failures.record("store_migrate", exc, retry_s=self.settings.capture_retry_s)
        self.writer.start()
        await self.upkeep()
        self._tasks.append(
            every(self.settings.capture_retention_interval_s, self.upkeep, name="store_upkeep", failures=self.failures)
        )

    async def upkeep(self) -> None:
        """Retention, then the judge gauges; a failure of one does not skip the other."""
        for name, job in (("store_retention", self.run_retention), ("judge_gauges", self.refresh_judge_gauges)):
            try:
                await job()
            except Exception as exc:  # noqa: BLE001 - recorded; the next round retries
                self.failures.record(name, exc)

    async def run_retention(self) -> dict[str, int]:
        cutoff = datetime.now(UTC) - timedelta(days=self.settings.capture_retention_days)
        deleted = await purge_before(self.engine, cutoff)
        if any(deleted.values()):
            log.info({"event": "retention", **deleted})
        return deleted

    async def refresh_judge_gauges(self) -> None:
        for level in await judge_levels(self.engine):
            if "score" in level:
                self.metrics.judge_score.labels(level["route"], level["variant"]).set(level["score"])
            if "baseline" in level:
                self.metrics.judge_baseline.labels(level["route"], level["variant"]).set(level["baseline"])

    async def aclose(self) -> None:
        await cancel_and_wait(self._tasks)
        await self.writer.aclose()
        await self.engine.dispose()
