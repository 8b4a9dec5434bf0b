"""The inference log's writer: captured rows go to the database through a bounded queue, in batches, by
one background task per process, after the client has its answer.

The database being slow or down never reaches the client: `offer` only enqueues (a full queue drops
the row, counted), and the writer keeps the batch in hand while the database is unreachable, retrying
with a pause, so writing resumes by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.observability.failures import FailureLog
from gateway.observability.metrics import GatewayMetrics
from gateway.store.queries import insert_inferences

# The database answered and refused these rows: retrying the same batch would fail the same way.
REJECTED_BY_DATABASE = (sa_exc.IntegrityError, sa_exc.DataError, sa_exc.ProgrammingError)


def transient(exc: BaseException) -> bool:
    """A failure worth retrying the same batch for (the database unreachable), not one it would repeat."""
    if isinstance(exc, REJECTED_BY_DATABASE):
        return False
    return isinstance(exc, sa_exc.DBAPIError | sa_exc.TimeoutError | OSError | TimeoutError)


class CaptureWriter:
    def __init__(
        self,
        engine: AsyncEngine,
        metrics: GatewayMetrics,
        failures: FailureLog,
        *,
        capacity: int = 10_000,
        batch_size: int = 200,
        retry_s: float = 1.0,
        write_timeout_s: float = 10.0,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.failures = failures
        self.batch_size = batch_size
        self.retry_s = retry_s
        self.write_timeout_s = write_timeout_s
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=capacity)
        self._task: asyncio.Task[None] | None = None

    def offer(self, row: dict[str, Any]) -> bool:
        try:
            self._queue.put_nowait(row)
        except asyncio.QueueFull:
            self.metrics.capture_dropped.labels("queue_full").inc()
            return False
        self.metrics.capture_queued.inc()
        return True

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="capture-writer")

    async def aclose(self, drain_s: float = 5.0) -> None:
        """Write what is queued (for at most `drain_s`), then stop."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_s):
                await self._queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._write(batch)
            for _ in batch:
                self._queue.task_done()
            self.metrics.capture_queued.dec(len(batch))

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        """Until written or refused: while the database is unreachable the batch waits here and the
        queue behind it fills (and then drops, counted)."""
        while True:
            try:
                async with asyncio.timeout(self.write_timeout_s):
                    await insert_inferences(self.engine, batch)
                self.metrics.capture_written.inc(len(batch))
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified below; never reaches a client
                self.metrics.capture_write_errors.inc()
                if not transient(exc):
                    self.metrics.capture_dropped.labels("rejected").inc(len(batch))
                    self.failures.record("capture_writer", exc, rows=len(batch), retried=False)
                    return
                self.failures.record("capture_writer", exc, rows=len(batch), retried=True)
                await asyncio.sleep(self.retry_s)
