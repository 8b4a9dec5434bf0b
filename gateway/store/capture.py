"""Capture: a sampled share of answers goes to the inference log, written after the client has its
answer, through a bounded queue, in batches, by one background task per process.

The database being slow or down never reaches the client: `offer` only enqueues (a full queue drops
the record, counted), and the writer keeps the batch in hand while the database is unreachable,
retrying with a pause, so writing resumes by itself. Prompts are never logged or used as labels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.accounting import Answer, Ticket
from gateway.auth import Principal
from gateway.routes.targeting import Target
from gateway.store.queries import insert_inferences
from gateway.store.records import CaptureContext, inference_row

log = logging.getLogger("gateway.capture")
# The database answered and refused these rows: retrying the same batch would fail the same way.
REJECTED_BY_DATABASE = (sa_exc.IntegrityError, sa_exc.DataError, sa_exc.ProgrammingError)


class CaptureMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.written = Counter("gateway_capture_written", "Captured inferences written to the database.",
                               registry=registry)
        self.dropped = Counter("gateway_capture_dropped", "Captured inferences dropped (queue_full: the "
                               "database was slow or down; rejected: the database refused the batch).",
                               ("reason",), registry=registry)
        self.queued = Gauge("gateway_capture_queue", "Captured inferences waiting to be written.",
                            registry=registry, multiprocess_mode="livesum")
        self.write_errors = Counter("gateway_capture_write_errors", "Failed batch writes (retried).",
                                    registry=registry)
        self.feedback = Counter("gateway_feedback_items", "Feedback received, by kind (rating, score, comment, "
                                "correction).", ("kind",), registry=registry)
        for reason in ("queue_full", "rejected"):
            self.dropped.labels(reason)


def transient(exc: BaseException) -> bool:
    """A failure worth retrying the same batch for (the database unreachable), not one it would repeat."""
    if isinstance(exc, REJECTED_BY_DATABASE):
        return False
    return isinstance(exc, sa_exc.DBAPIError | sa_exc.TimeoutError | OSError | TimeoutError)


class CaptureWriter:
    def __init__(self, engine: AsyncEngine, metrics: CaptureMetrics, *, capacity: int = 10_000,
                 batch_size: int = 200, retry_s: float = 1.0, write_timeout_s: float = 10.0) -> None:
        self.engine = engine
        self.metrics = metrics
        self.batch_size = batch_size
        self.retry_s = retry_s
        self.write_timeout_s = write_timeout_s
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=capacity)
        self._task: asyncio.Task[None] | None = None

    def offer(self, row: dict[str, Any]) -> bool:
        try:
            self._queue.put_nowait(row)
        except asyncio.QueueFull:
            self.metrics.dropped.labels("queue_full").inc()
            return False
        self.metrics.queued.inc()
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
            self.metrics.queued.dec(len(batch))

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        """Until written or refused: while the database is unreachable the batch waits here and the
        queue behind it fills (and then drops, counted)."""
        while True:
            try:
                async with asyncio.timeout(self.write_timeout_s):
                    await insert_inferences(self.engine, batch)
                self.metrics.written.inc(len(batch))
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified below; never reaches a client
                self.metrics.write_errors.inc()
                if not transient(exc):
                    self.metrics.dropped.labels("rejected").inc(len(batch))
                    log.error({"event": "capture_rejected", "rows": len(batch), "error": type(exc).__name__})
                    return
                log.warning({"event": "capture_retry", "rows": len(batch), "error": type(exc).__name__})
                await asyncio.sleep(self.retry_s)


class Capture:
    """Which requests are captured (sampled per route, per key, or globally) and handing them to the writer."""

    def __init__(self, writer: CaptureWriter | None, *, percent: float = 0.0,
                 key_percent: Mapping[str, float] | None = None) -> None:
        self.writer = writer
        self.percent = percent
        self.key_percent = dict(key_percent or {})

    def share(self, principal: Principal, target: Target) -> float:
        """The highest share any switch gives this request (route, the key's own record, the key in
        GATEWAY_CAPTURE_KEYS, global), in percent."""
        route_share = 0.0
        capture = getattr(target.route.spec, "capture", None) if target.route is not None else None
        if capture is not None:
            route_share = capture.percent
        return max(self.percent, route_share, self.key_percent.get(principal.key_id or "", 0.0),
                   principal.capture_percent or 0.0)

    def context(self, request_id: str, endpoint: str, principal: Principal, target: Target,
                req: BaseModel) -> CaptureContext | None:
        """A context when this request is sampled, else None (the common, free case)."""
        if self.writer is None:
            return None
        share = self.share(principal, target)
        if share <= 0 or (share < 100 and random.random() * 100 >= share):
            return None
        return CaptureContext(request_id=request_id, endpoint=endpoint, body=req.model_dump(exclude_none=True))

    def on_settled(self, ticket: Ticket, answer: Answer) -> None:
        """The accounting hook: build the row and enqueue it (never blocks, never raises to the caller)."""
        ctx = ticket.capture
        if self.writer is None or not isinstance(ctx, CaptureContext):
            return
        try:
            self.writer.offer(inference_row(ctx, ticket, answer))
        except Exception:  # a capture bug must not become the client's problem
            log.exception("capture failed")
