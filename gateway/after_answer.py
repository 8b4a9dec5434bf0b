"""Work that follows an answer (its usage, limits, cache write, metrics and log line), run a moment later.

Why: a client that sends its next request as soon as it has an answer (an agent loop, a batch job,
a chat app's next turn) reaches the gateway within tens of microseconds, while the bookkeeping of
the answer it just got was still running (~0.2 ms of cold Python for a plain answer, more for a
stream): the next request waited for it. Deferred by `DELAY_S`, the bookkeeping runs while the
next request waits on its backend, which is where an LLM gateway spends nearly all its time.
Nothing is skipped or reordered: jobs run first in, first out, each in the context (the access
record) of the request it belongs to, and `run_all()` runs whatever is left at shutdown. Under load
each timer runs every job queued by then, so the queue never holds more than `DELAY_S` of answers.

Measured (bench/reports/2026-11-23/README.md, fifth pass): the gateway's own work after a plain answer
fell 217 -> 75 us with a client that asks again at once. What that client saw on the 2-core VM was
a smaller gain (~0.05 ms), because the gateway now idles before the next request and its virtual
CPU halts in that gap.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable

log = logging.getLogger("gateway.after_answer")

Job = Callable[[], object]


class AfterAnswer:
    """A first-in, first-out queue of bookkeeping jobs run `delay_s` after the first of them was queued."""

    DELAY_S = 0.002  # longer than a next request takes to reach its backend (~0.7 ms cold, 1 client)

    def __init__(self, delay_s: float = DELAY_S) -> None:
        self.delay_s = delay_s
        self._jobs: list[tuple[contextvars.Context, Job]] = []
        self._pending: asyncio.Handle | None = None

    @property
    def pending(self) -> int:
        """Jobs queued and not yet run (a count, not `__len__`: an empty queue must not be falsy)."""
        return len(self._jobs)

    def defer(self, job: Job) -> None:
        """Run `job` later, in the current context; outside a running loop (tests, shutdown), now."""
        self._jobs.append((contextvars.copy_context(), job))
        if self._pending is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.run_all()
                return
            self._pending = loop.call_later(self.delay_s, self.run_all)

    def run_all(self) -> None:
        """Run every job queued so far (the timer's callback; at shutdown, before the accounting is flushed)."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        jobs, self._jobs = self._jobs, []  # a job that defers another queues it for the next timer
        for context, job in jobs:
            self._run(context, job)

    @staticmethod
    def _run(context: contextvars.Context, job: Job) -> None:
        try:
            context.run(job)
        except Exception:  # the client has its answer; a bookkeeping bug must not become a second error
            log.exception("bookkeeping after an answer failed")
