"""SIGTERM as a drain rather than a stop.

Kubernetes (and `docker compose stop`) send SIGTERM while the load balancer in front may still send new
requests for a few seconds: it learns about the stop from the same event, on its own schedule. A
process that stops listening at once turns those requests into connection errors. So the first
SIGTERM only marks the process as draining (/readyz answers 503, which takes it out of the endpoints);
the process keeps serving for GATEWAY_DRAIN_DELAY_S, and only then hands the signal to uvicorn, which
stops listening and lets the requests in flight finish within GATEWAY_SHUTDOWN_GRACE_S. A second
SIGTERM goes to uvicorn at once.

Signals belong to the process, and uvicorn installs its handler before the app starts: `install`
(called from the app's start-up, in the main thread) puts this one in front of it. Each worker process
of a multi-worker gateway gets the signal from uvicorn's supervisor and drains the same way.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger("gateway.drain")


class Drain:
    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.draining = False
        self._next: Callable[[int, FrameType | None], Any] | None = None

    def install(self) -> bool:
        """Take SIGTERM before uvicorn's handler. False where signals cannot be handled (not the main thread,
        as in tests driving the app in-process): the process then stops as uvicorn stops it."""
        if threading.current_thread() is not threading.main_thread():
            return False
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):
            return False
        self._next = previous
        signal.signal(signal.SIGTERM, self._on_sigterm)
        return True

    def _on_sigterm(self, sig: int, frame: FrameType | None) -> None:
        assert self._next is not None
        if self.draining or self.delay_s <= 0:
            self.draining = True
            self._next(sig, frame)
            return
        self.draining = True
        log.warning("SIGTERM: draining; /readyz answers 503, serving %.1f s more before stopping", self.delay_s)
        # uvicorn's handler only sets a flag its main loop reads, so calling it from a timer thread is safe.
        timer = threading.Timer(self.delay_s, self._next, args=(sig, None))
        timer.daemon = True
        timer.start()
