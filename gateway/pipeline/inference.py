"""The life of one inference request (POST /v1/chat/completions, /v1/completions, /v1/embeddings), top
to bottom. Each step is one call into the module that owns it:

  1. authenticate  who is calling (401, 403)                         gateway.access.authenticate
  2. parse         the body as the endpoint's request model, within   gateway.protocol.requests,
                   what one request may ask for (400)                 gateway.access.bounds
  3. target        model or route -> sticky variant -> fallbacks      gateway.model_routes.targeting
                   (an unknown model still costs a request of RPM)
  4. admit         limits reserved and the cache read, one round      gateway.access.admission
                   trip (429; a cache hit is replayed, step 8)
  5. call          a replica: deadline, failover, breaker, affinity,  gateway.replicas.call
                   adapter, the backend span
  6. relay         the answer as JSON, or as SSE chunk by chunk       gateway.pipeline.relay
  7. settle        after the last byte: metrics, charges (limits,     gateway.observability.metrics,
                   usage, cost, cache write), route signals,          gateway.access.charges,
                   capture, then one Redis write for all of it        gateway.model_routes.stats,
                                                                      gateway.pipeline.capture,
                                                                      gateway.state.write_behind
  8. shadow        a share of a route's answered requests mirrored    gateway.pipeline.shadow

Nothing calls back into this module, and every object it uses was built, complete, at start-up
(gateway/app.py).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from pydantic import BaseModel
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response

from gateway.access.admission import Admission
from gateway.access.authenticate import Authenticator
from gateway.access.bounds import RequestBounds
from gateway.access.charges import Charges
from gateway.access.limits import Reservation
from gateway.access.principal import Principal
from gateway.errors import ModelNotFound
from gateway.model_routes.stats import RouteStats
from gateway.model_routes.targeting import Target, Targeting
from gateway.observability.access_log import current_record
from gateway.observability.failures import FailureLog
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline import relay
from gateway.pipeline.capture import Capture, Sampled
from gateway.pipeline.shadow import ShadowMirror
from gateway.pipeline.verdicts import Verdicts
from gateway.protocol.answer import Answer, outcome_of
from gateway.protocol.headers import RequestHeaders
from gateway.protocol.requests import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    InferenceRequest,
    parse_request,
)
from gateway.replicas.call import CHAT, COMPLETION, EMBEDDINGS, Operation, ReplicaCaller
from gateway.state.write_behind import WriteBehind


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str  # chat | completions | embeddings: the cache key's and the inference log's
    request: type[BaseModel]  # the body's model
    operation: Operation  # how a replica is called


CHAT_COMPLETIONS = Endpoint("chat", ChatCompletionRequest, CHAT)
COMPLETIONS = Endpoint("completions", CompletionRequest, COMPLETION)
EMBEDDING = Endpoint("embeddings", EmbeddingRequest, EMBEDDINGS)


@dataclass(slots=True)
class Ticket:
    """One request's account, settled after its answer: who pays, what was reserved, where it went."""

    principal: Principal
    target: Target
    reservation: Reservation | None
    store_key: str  # where a complete answer is cached ("": nowhere)
    sampled: Sampled | None  # chosen for the inference log
    prompt_tokens: int = 0  # the prompt's estimated tokens


class InferencePipeline:
    def __init__(
        self,
        *,
        authenticator: Authenticator,
        bounds: RequestBounds,
        targeting: Targeting,
        admission: Admission,
        caller: ReplicaCaller,
        charges: Charges,
        route_stats: RouteStats,
        capture: Capture,
        writes: WriteBehind,
        shadow: ShadowMirror,
        verdicts: Verdicts,
        metrics: GatewayMetrics,
        failures: FailureLog,
    ) -> None:
        self.authenticator = authenticator
        self.bounds = bounds
        self.targeting = targeting
        self.admission = admission
        self.caller = caller
        self.charges = charges
        self.route_stats = route_stats
        self.capture = capture
        self.writes = writes
        self.shadow = shadow
        self.verdicts = verdicts
        self.metrics = metrics
        self.failures = failures

    async def serve(self, request: Request, endpoint: Endpoint) -> Response:
        headers = RequestHeaders.of(request.scope)
        record = current_record()  # the access log's line for this request

        # 1. authenticate
        principal = await self.authenticator.authenticate(headers, scope="inference")
        record.key_id, record.owner = principal.key_id, principal.subject

        # 2. parse, within what one request may ask for
        req: InferenceRequest = parse_request(await request.body(), endpoint.request)  # type: ignore[assignment]
        self.bounds.check(req)
        record.rater = getattr(req, "user", None) or principal.subject  # whose rating an answer's rating is

        # 3. target
        try:
            target, req = await self.targeting.target(principal, req, client=headers.client, forced=headers.variant)
        except ModelNotFound:
            await self.admission.count_refused(principal)  # asking for unknown models is not free either
            raise
        record.model = target.model  # for the access log and feedback, even when no backend is called

        # 4. admit
        body = req.model_dump(exclude_none=True)
        stream = bool(body.get("stream"))
        admitted = await self.admission.admit(
            principal,
            endpoint=endpoint.name,
            req=req,
            body=body,
            model=target.model,
            version=target.version or target.model,
            cache_control=headers.cache_control,
            cache_choice=headers.cache_choice,
        )
        request_id: str = request.scope["state"]["request_id"]
        ticket = Ticket(
            principal=principal,
            target=target,
            reservation=admitted.reservation,
            store_key=admitted.store_key,
            prompt_tokens=admitted.prompt_tokens,
            sampled=self.capture.sample(request_id, endpoint.name, principal, target, req),
        )
        if admitted.hit is not None:  # the cache answered: no replica is called, the stored answer is replayed
            response, answer = relay.from_cache(
                admitted.hit, target.model, stream=stream, include_usage=getattr(req, "include_usage", False)
            )
        else:
            # 5. call, and 6. relay
            response, answer = await self._call(endpoint, req, ticket, stream)
        response.headers.update(
            {
                "X-Cache": "HIT" if admitted.hit is not None else "BYPASS" if admitted.bypass else "MISS",
                **admitted.headers,
            }
        )

        # 7. settle, after the last byte
        relay.run_after(response, BackgroundTask(self.settle, ticket, answer))

        # 8. shadow
        shadow = target.route.spec.shadow if target.route is not None else None
        if shadow is not None and endpoint is not EMBEDDING and self.shadow.wants(shadow.percent):
            job = self.shadow.job(target.public, shadow.model, req, request_id)  # type: ignore[arg-type]
            relay.run_after(response, BackgroundTask(self.shadow.offer, job))
        return response

    async def _call(
        self, endpoint: Endpoint, req: InferenceRequest, ticket: Ticket, stream: bool
    ) -> tuple[Response, Answer]:
        """Steps 5 and 6: a replica's answer relayed. Without one, the failure is booked before it is raised
        (the reservation given back, the outcome counted)."""
        target = ticket.target
        started = time.perf_counter()
        try:
            if stream and not isinstance(req, EmbeddingRequest):  # embeddings have no streamed form
                opened = await self.caller.stream(endpoint.operation, req, target.models)
                assemble = bool(ticket.store_key) or ticket.sampled is not None
                return relay.stream(opened, req, started, assemble=assemble, failures=self.failures)
            return relay.unary(await self.caller.unary(endpoint.operation, req, target.models), req, started)
        except BaseException as exc:
            failed = Answer(
                model=target.model, outcome=outcome_of(exc), elapsed_s=time.perf_counter() - started, answered=False
            )
            self._book(ticket, failed, None)
            if not isinstance(exc, asyncio.CancelledError):  # a cancelled request must not wait for Redis
                await self.writes.flush()
            raise

    async def settle(self, ticket: Ticket, answer: Answer) -> None:
        """Book an answer everywhere it counts, then write what Redis must know; never raises to the client."""
        verdict = None
        if answer.outcome == "success" and answer.response_format is not None:
            try:
                verdict = await self.verdicts.verdict(answer.response_format, answer.text)
            except Exception as exc:  # noqa: BLE001 - the answer is booked unchecked
                self.failures.record("format_check", exc, traceback=True)
        self._book(ticket, answer, verdict)
        await self.writes.flush()

    def _book(self, ticket: Ticket, answer: Answer, verdict: str | None) -> None:
        """The in-memory part of settling: metrics, charges, route signals, capture."""
        target, route = ticket.target, ticket.target.route
        answer.estimate_usage(ticket.prompt_tokens)  # a stream cut before its usage chunk is charged what it got
        try:
            current_record().settled(answer, route.name if route else None, route.version if route else None)
            self.metrics.observe_answer(target.public, answer, verdict)
            self.charges.charge(
                ticket.principal,
                target.model,
                ticket.reservation,
                answer,
                store_key=ticket.store_key,
                version=target.version,
            )
            if route is not None:
                self.route_stats.record(route, target.variant or answer.model, answer, verdict)
            if ticket.sampled is not None:
                self.capture.keep(ticket.sampled, answer, verdict)
        except Exception as exc:  # noqa: BLE001 - the client has its answer; a bookkeeping bug must not add an error
            self.failures.record("settle", exc, traceback=True)
