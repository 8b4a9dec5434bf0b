"""The store's long-lived part in a gateway process: the engine, migrations at start-up, the capture
writer, and the periodic job (retention, judge gauges).

The gateway serves whether or not the database is reachable: a start-up migration that fails is
retried in the background, and capture starts writing once the schema is there (until then the
queue fills and drops, counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.tasks import cancel_and_wait
from gateway.store.capture import Capture, CaptureMetrics, CaptureWriter
from gateway.store.db import async_url, create_engine, ensure_sqlite_folder, migrate
from gateway.store.queries import judge_levels, purge_before
from gateway.store.settings import StoreSettings

log = logging.getLogger("gateway.store")
MIGRATE_TIMEOUT_S = 30.0


class JudgeGauges:
    def __init__(self, registry: CollectorRegistry) -> None:
        # multiprocess_mode: every worker reads the same rows; the gauge is the same in each.
        self.score = Gauge("gateway_judge_score", "Mean judge score (0..1) of the latest judge run.",
                           ("route", "variant"), registry=registry, multiprocess_mode="max")
        self.baseline = Gauge("gateway_judge_baseline_score", "Mean judge score of the route and variant's "
                              "baseline run.", ("route", "variant"), registry=registry, multiprocess_mode="max")


class StoreRuntime:
    def __init__(self, settings: StoreSettings, registry: CollectorRegistry) -> None:
        url = settings.database_url.get_secret_value() if settings.database_url else None
        self.url = async_url(url, settings.sqlite_path)
        self.sqlite_path = None if url else settings.sqlite_path
        if self.sqlite_path is not None:
            ensure_sqlite_folder(self.sqlite_path)
            # Which file this process uses, so two processes that disagree are easy to spot.
            log.info({"event": "store", "database": "sqlite", "path": self.sqlite_path})
        self.settings = settings
        self.engine: AsyncEngine = create_engine(self.url)
        self.metrics = CaptureMetrics(registry)
        self.judge = JudgeGauges(registry)
        self.writer = CaptureWriter(self.engine, self.metrics, capacity=settings.capture_queue,
                                    batch_size=settings.capture_batch, retry_s=settings.capture_retry_s)
        self.capture = Capture(self.writer, percent=settings.capture_percent, key_percent=settings.capture_keys)
        self.ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Migrate (bounded wait), then write; on failure keep retrying in the background."""
        if self.settings.migrate_on_start:
            try:
                async with asyncio.timeout(MIGRATE_TIMEOUT_S):
                    await self.migrate()
            except Exception as exc:  # noqa: BLE001 - the gateway serves without its store
                log.warning({"event": "store_unavailable", "error": f"{type(exc).__name__}: {exc}"[:300]})
        else:
            self.ready.set()
        self._tasks.append(asyncio.create_task(self._until_ready(), name="store-start"))
        self._tasks.append(asyncio.create_task(self._periodic(), name="store-retention"))

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
            with contextlib.suppress(Exception):
                await self.migrate()
        self.writer.start()

    async def _periodic(self) -> None:
        await self.ready.wait()
        while True:
            with contextlib.suppress(Exception):
                await self.run_retention()
            with contextlib.suppress(Exception):
                await self.refresh_judge_gauges()
            await asyncio.sleep(self.settings.capture_retention_interval_s)

    async def run_retention(self) -> dict[str, int]:
        cutoff = datetime.now(UTC) - timedelta(days=self.settings.capture_retention_days)
        deleted = await purge_before(self.engine, cutoff)
        if any(deleted.values()):
            log.info({"event": "retention", **deleted})
        return deleted

    async def refresh_judge_gauges(self) -> None:
        for level in await judge_levels(self.engine):
            if "score" in level:
                self.judge.score.labels(level["route"], level["variant"]).set(level["score"])
            if "baseline" in level:
                self.judge.baseline.labels(level["route"], level["variant"]).set(level["baseline"])

    async def aclose(self) -> None:
        await cancel_and_wait(self._tasks)
        await self.writer.aclose()
        await self.engine.dispose()
