"""Shadow traffic: a share of a route's requests is sent again, after the client has its answer, to a
candidate whose answer is measured (latency, errors, tokens, JSON-format compliance) and logged with the
request id, never returned. It takes the same replica-calling step as every request (deadline, breaker,
failover, the backend span, marked `gateway.shadow`). The work is bounded: a queue of at most `capacity`
requests served by `workers` tasks; what does not fit is dropped and counted, so shadows never slow the
real traffic.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

from gateway.background import cancel_and_wait
from gateway.observability.failures import FailureLog
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline.verdicts import Verdicts
from gateway.protocol.requests import ChatCompletionRequest, GenerationRequest
from gateway.protocol.structured import unary_answer
from gateway.replicas.call import CHAT, COMPLETION, ReplicaCaller

log = logging.getLogger("gateway.shadow")


@dataclass(frozen=True, slots=True)
class ShadowJob:
    route: str
    model: str
    req: GenerationRequest  # the request as the client's variant got it, made non-streamed
    request_id: str | None


class ShadowMirror:
    def __init__(
        self,
        *,
        caller: ReplicaCaller,
        metrics: GatewayMetrics,
        failures: FailureLog,
        verdicts: Verdicts,
        capacity: int = 64,
        workers: int = 2,
    ) -> None:
        self.caller, self.metrics, self.failures, self.verdicts = caller, metrics, failures, verdicts
        self.queue: asyncio.Queue[ShadowJob] = asyncio.Queue(maxsize=capacity)
        self.workers = workers
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work(), name="shadow") for _ in range(self.workers)]

    async def aclose(self) -> None:
        await cancel_and_wait(self._tasks)

    def wants(self, percent: float) -> bool:
        return random.random() * 100 < percent

    def job(self, route: str, model: str, req: GenerationRequest, request_id: str | None) -> ShadowJob:
        return ShadowJob(
            route=route,
            model=model,
            request_id=request_id,
            req=req.model_copy(update={"stream": False, "stream_options": None}),
        )

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
            except Exception as exc:  # noqa: BLE001 - a shadow's bug must not stop the workers
                self.failures.record("shadow", exc, traceback=True, route=job.route, request_id=job.request_id)
            finally:
                self.queue.task_done()

    async def _mirror(self, job: ShadowJob) -> None:
        started = time.perf_counter()
        chat = isinstance(job.req, ChatCompletionRequest)
        error: str | None = None
        result: dict[str, Any] = {}
        try:
            model = await self.caller.pool.resolve(job.model)
            call = await self.caller.unary(CHAT if chat else COMPLETION, job.req, (model,), shadow=True)
            result = call.result
        except Exception as exc:  # noqa: BLE001 - a shadow's failure is what is measured
            error = f"{type(exc).__name__}: {exc}"[:200]
        elapsed = time.perf_counter() - started
        verdict = None
        if isinstance(job.req, ChatCompletionRequest) and not error:
            verdict = await self.verdicts.verdict(job.req.response_format, unary_answer(result))
        self.metrics.shadow_requests.labels(job.route, job.model, "error" if error else "ok").inc()
        if not error:
            self.metrics.shadow_latency.labels(job.route, job.model).observe(elapsed)
        usage = result.get("usage") or {}
        log.info(
            {
                "event": "shadow",
                "shadow": True,
                "request_id": job.request_id,
                "route": job.route,
                "model": job.model,
                "latency_ms": round(elapsed * 1000, 1),
                "error": error,
                "format": verdict,
                "prompt_tokens": usage.get("prompt_tokens"),
                "completion_tokens": usage.get("completion_tokens"),
            }
        )
