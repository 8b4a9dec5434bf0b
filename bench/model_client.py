"""The real-model benchmark's client: the `openai` SDK, streaming, timing each request's first token.

A target is where requests go: the stack (nginx -> gateway, which picks the replica), or the replicas
called directly, with the gateway's own policy code (gateway.backends.affinity) picking the replica
in the client, so "direct" differs from "stack" by the stack alone.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import openai

from bench.model_workload import Conversation
from gateway.protocol.requests import ChatCompletionRequest
from gateway.replicas.affinity import Placements, affinity_key, pick_bounded
from gateway.settings import RoutingPolicy

Messages = list[dict[str, str]]


@dataclass
class Record:
    """One request. kind: `single`, `first` (a chat's first turn) or `follow` (a later turn)."""

    kind: str
    ttft_s: float
    total_s: float
    prompt_tokens: int
    completion_tokens: int
    replica: str | None  # known for direct calls; the stack's split comes from the gateway's metrics
    error: str | None = None
    text: str = ""
    # Prompt tokens the server took from its cache (a slot or --cache-ram), from OpenAI's
    # `usage.prompt_tokens_details.cached_tokens`, which llama-server fills and the gateway relays. A count,
    # not a time: a hit or a miss reads the same on a busy host.
    cached_tokens: int | None = None
    chat: int | None = None  # the conversation a chat turn belongs to


@dataclass
class _Replica:
    name: str
    client: openai.AsyncOpenAI
    in_flight: int = 0


def _cause(exc: BaseException) -> str:
    """The transport error under the SDK's generic "Connection error." (what actually went wrong)."""
    cause = exc.__cause__
    return f" ({type(cause).__name__}: {str(cause)[:200]})" if cause is not None else ""


def _cached(usage: Any) -> int | None:
    details = getattr(usage, "prompt_tokens_details", None)
    return getattr(details, "cached_tokens", None)


class Target:
    """Somewhere to send chats: `stack` (one client, the gateway routes) or `direct` (routed here)."""

    def __init__(
        self,
        *,
        name: str,
        policy: RoutingPolicy,
        model: str,
        clients: dict[str, openai.AsyncOpenAI],
        max_tokens: int,
        load_factor: float = 1.25,
        prefix_chars: int = 2048,
        affinity_memory: int = 16384,
        move_factor: float = 2.0,
    ) -> None:
        self.name, self.policy, self.model, self.max_tokens = name, policy, model, max_tokens
        self._replicas = [_Replica(n, c) for n, c in clients.items()]
        self._factor, self._prefix_chars = load_factor, prefix_chars
        self._rotation = itertools.count()
        self._placements, self._move_factor = Placements(affinity_memory), move_factor
        self.routes_itself = len(self._replicas) > 1

    def _pick(self, messages: Messages) -> _Replica:
        if len(self._replicas) == 1:
            return self._replicas[0]
        if self.policy == "prefix_affinity":
            key = affinity_key(ChatCompletionRequest(model=self.model, messages=messages), self._prefix_chars)
            chosen = (
                pick_bounded(key, self._replicas, lambda r: True, self._factor, self._placements, self._move_factor)
                if key
                else None
            )
            if chosen is not None:
                return chosen  # type: ignore[return-value]
        start = next(self._rotation) % len(self._replicas)  # the pool's least-in-flight, rotation for ties
        rotated = self._replicas[start:] + self._replicas[:start]
        return min(rotated, key=lambda r: r.in_flight)

    async def chat(self, messages: Messages, kind: str) -> Record:
        replica = self._pick(messages)
        replica.in_flight += 1
        t0 = time.perf_counter()
        ttft, parts, usage = float("nan"), [], None
        try:
            stream = await replica.client.chat.completions.create(
                model=self.model,
                messages=messages,
                stream=True,
                max_tokens=self.max_tokens,
                temperature=0,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},
            )  # fixed-length answers
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    if not parts:
                        ttft = time.perf_counter() - t0
                    parts.append(chunk.choices[0].delta.content)
                if chunk.usage:
                    usage = chunk.usage
        except openai.OpenAIError as exc:
            return Record(
                kind,
                ttft,
                time.perf_counter() - t0,
                0,
                0,
                replica.name if self.routes_itself else None,
                error=f"{type(exc).__name__}: {str(exc)[:200]}{_cause(exc)}",
            )
        finally:
            replica.in_flight -= 1
        return Record(
            kind,
            ttft,
            time.perf_counter() - t0,
            usage.prompt_tokens if usage else 0,
            usage.completion_tokens if usage else 0,
            replica.name if self.routes_itself else None,
            text="".join(parts),
            cached_tokens=_cached(usage),
        )

    async def aclose(self) -> None:
        await asyncio.gather(*(r.client.close() for r in self._replicas))


async def run_single(target: Target, prompts: list[Messages], concurrency: int) -> tuple[list[Record], float]:
    """Every prompt once, `concurrency` at a time; returns the records and the wall time."""
    todo = deque(prompts)
    records: list[Record] = []

    async def worker() -> None:
        while todo:
            records.append(await target.chat(todo.popleft(), "single"))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return records, time.perf_counter() - t0


async def run_chats(
    target: Target, chats: list[Conversation], concurrency: int, *, think_s: float = 0.0, seed: int = 0
) -> tuple[list[Record], float]:
    """Chats turn by turn, `concurrency` requests at a time. A chat whose turn is answered goes to the back
    of the queue (its user reads and types while other chats are served), so turns interleave as they do
    with many users: a replica's slots see every chat between two turns of one.

    `think_s`: the mean of each user's time to read and type (exponential, seeded), after which the chat
    rejoins the queue. With 0 every chat rejoins at once, in the order its answers ended: a closed loop
    that replays the same sequence each round, so least-in-flight's rotation can send a chat's
    turns to the same replica by accident. Random think times break that lockstep as real users do."""
    ready: deque[Conversation] = deque(chats)
    unfinished = len(chats)
    changed = asyncio.Condition()
    records: list[Record] = []
    rng = random.Random(seed)
    thinking: set[asyncio.Task[None]] = set()

    def can_go() -> bool:
        return bool(ready) or unfinished == 0

    async def rejoin(chat: Conversation, delay: float) -> None:
        await asyncio.sleep(delay)
        async with changed:
            ready.append(chat)
            changed.notify_all()

    async def worker() -> None:
        nonlocal unfinished
        while True:
            async with changed:
                await changed.wait_for(can_go)
                if not ready:
                    return
                chat = ready.popleft()
            messages = chat.next_messages()
            record = await target.chat(messages, "first" if chat.turn == 0 else "follow")
            record.chat = chat.ident
            records.append(record)
            chat.answered(messages, record.text or "(no answer)")
            async with changed:
                if chat.finished:
                    unfinished -= 1
                elif think_s > 0:
                    task = asyncio.create_task(rejoin(chat, rng.expovariate(1 / think_s)))
                    thinking.add(task)
                    task.add_done_callback(thinking.discard)
                else:
                    ready.append(chat)
                changed.notify_all()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return records, time.perf_counter() - t0
