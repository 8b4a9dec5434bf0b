"""Format verdicts for answers, computed in a process of their own.

A check is pure Python (jsonschema) and can take a good part of its time budget on a large accepted
schema; in a thread it would hold the GIL the event loop needs, and every request of the worker would
wait on it. A child process (a `ProcessPoolExecutor` of one, started when the first check is asked for)
keeps the loop free: the worker pays for sending the schema and the answer, nothing else. Checks wait
their turn in a bounded queue; past it, an answer gets no verdict rather than memory held for a check
that would come too late to matter. Every answer without a verdict is counted, with why.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, ProcessPoolExecutor
from typing import Any, Literal

from gateway.protocol.structured import CHECK_BUDGET_S, CheckOverBudget, Verdict, check_answer, structured_format

# Why an answer got no verdict: its check ran out of time, too many checks were waiting, the checking
# process died (it is started again for the next check).
Unjudged = Literal["time", "queue", "failed"]


class Verdicts:
    """`check_answer` in a child process, `waiting` checks at most (one running), each within `budget_s`;
    `on_unjudged` is told why each answer got no verdict."""

    def __init__(
        self,
        *,
        budget_s: float = CHECK_BUDGET_S,
        waiting: int = 64,
        on_unjudged: Callable[[Unjudged], None] | None = None,
    ) -> None:
        self.budget_s = budget_s
        self._waiting = waiting
        self._on_unjudged = on_unjudged
        self._pending = 0
        self._executor: ProcessPoolExecutor | None = None

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            # Not a fork of this process (its threads, its loop, its memory): a fork of a small server process
            # that has imported only what a check needs.
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([check_answer.__module__])
            self._executor = ProcessPoolExecutor(max_workers=1, mp_context=context)
        return self._executor

    def _unjudged(self, why: Unjudged) -> None:
        if self._on_unjudged is not None:
            self._on_unjudged(why)

    async def verdict(self, response_format: dict[str, Any] | None, answer: str | None) -> Verdict | None:
        """`valid`/`invalid`; None when no format was asked for, there is no answer, or no verdict came."""
        if answer is None or structured_format(response_format) is None:
            return None
        if self._pending >= self._waiting:
            self._unjudged("queue")
            return None
        self._pending += 1
        pool = self._pool()
        try:
            return await asyncio.wrap_future(pool.submit(check_answer, response_format, answer, budget_s=self.budget_s))
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            # the pool was closed under a waiting check: the answer is still booked, without a verdict
        except CheckOverBudget:
            self._unjudged("time")
        except BrokenExecutor:  # the child died (killed, out of memory): the next check starts another
            self._executor = None
            pool.shutdown(wait=False, cancel_futures=True)
            self._unjudged("failed")
        finally:
            self._pending -= 1
        return None

    def close(self) -> None:
        """Stop the checking process (checks still waiting get no verdict)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
