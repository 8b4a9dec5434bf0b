"""Shadow traffic: a share of a route's requests is sent again, after the client has its answer, to a
candidate whose answer is measured (latency, errors, tokens, JSON-format compliance) and logged with the
request id, never returned. The work is bounded: a queue of at most `capacity` requests served by
`workers` tasks; what does not fit is dropped and counted, so shadows never slow the real traffic.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

from gateway.tasks import cancel_and_wait
from gateway.backends.pool import BackendPool
from gateway.format_check import check_answer, unary_answer
from gateway.metrics import GatewayMetrics
from gateway.protocol import ChatCompletionRequest

log = logging.getLogger("gateway.shadow")


@dataclass(frozen=True, slots=True)
class ShadowJob:
    route: str
    model: str
    req: Any  # the request as the client's variant got it, made non-streamed
    request_id: str | None


class ShadowMirror:
    def __init__(self, *, pool: BackendPool, metrics: GatewayMetrics, timeout_s: float,
                 capacity: int = 64, workers: int = 2) -> None:
        self.pool, self.metrics, self.timeout_s = pool, metrics, timeout_s
        self.queue: asyncio.Queue[ShadowJob] = asyncio.Queue(maxsize=capacity)
        self.workers = workers
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self.workers)]

    async def aclose(self) -> None:
        await cancel_and_wait(self._tasks)

    def wants(self, percent: float) -> bool:
        return random.random() * 100 < percent

    async def offer(self, job: ShadowJob) -> None:
        """Queue a mirror of an answered request; dropped (and counted) when the queue is full."""
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            self.metrics.shadow_requests.labels(job.route, job.model, "dropped").inc()

    async def _work(self) -> None:
        while True:
            job = await self.queue.get()
            try:
                await self._mirror(job)
            except Exception:
                log.exception("shadow request failed")
            finally:
                self.queue.task_done()

    async def _mirror(self, job: ShadowJob) -> None:
        started = time.perf_counter()
        chat = isinstance(job.req, ChatCompletionRequest)
        error: str | None = None
        result: dict[str, Any] = {}
        try:
            async with asyncio.timeout(self.timeout_s):
                model = await self.pool.resolve(job.model)
                lease, result = await self.pool.open(
                    model, lambda b: b.chat(job.req, model) if chat else b.complete(job.req, model))
                lease.done()
        except Exception as exc:  # noqa: BLE001 - a shadow's failure is what is measured
            error = f"{type(exc).__name__}: {exc}"[:200]
        elapsed = time.perf_counter() - started
        verdict = check_answer(job.req.response_format, unary_answer(result)) if chat and not error else None
        self.metrics.shadow_requests.labels(job.route, job.model, "error" if error else "ok").inc()
        if not error:
            self.metrics.shadow_latency.labels(job.route, job.model).observe(elapsed)
        usage = result.get("usage") or {}
        log.info({"event": "shadow", "request_id": job.request_id, "route": job.route, "model": job.model,
                  "latency_ms": round(elapsed * 1000, 1), "error": error, "format": verdict,
                  "prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": usage.get("completion_tokens")})
