"""Background loops of long-lived components (route follower, guard, shadow workers, discovery, store
jobs): started with the app, stopped with it, and never killed by one failed round."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable

from gateway.observability.failures import FailureLog


async def cancel_and_wait(tasks: Iterable[asyncio.Task[None] | None]) -> None:
    """Cancel every task, then wait until each has finished unwinding."""
    running = [t for t in tasks if t is not None]
    for task in running:
        task.cancel()
    for task in running:
        with contextlib.suppress(asyncio.CancelledError):
            await task


def every(
    interval_s: float,
    work: Callable[[], Awaitable[object]],
    *,
    name: str,
    failures: FailureLog,
    quiet: tuple[type[BaseException], ...] = (),
) -> asyncio.Task[None]:
    """A task running `work` every `interval_s` seconds (after a first wait); a round that raises does not
    stop it. A failure is recorded in `failures` under `name` with its traceback, except those in `quiet`:
    failures their origin already logged and counted (Redis being away: gateway/state/redis.py)."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await work()
            except quiet:
                pass
            except Exception as exc:  # noqa: BLE001 - recorded; the next round may succeed
                failures.record(name, exc, traceback=True)

    return asyncio.create_task(loop(), name=name)
