"""A per-replica circuit breaker: closed -> open after N consecutive failures -> one probe -> closed.

Our own small class rather than a library: aiobreaker (last release 2021) and circuitbreaker
wrap a call and judge it when it returns, but a streamed answer succeeds when its first byte
arrives and may still fail later, and the pool must ask "may I use this replica?" before it picks
one (to skip open replicas without spending a request on them). That needs `allow()` /
`record_*()` as separate steps, which is all this is.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable


class CircuitState(enum.IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    def __init__(
        self,
        *,
        failure_threshold: int,
        reset_after_s: float,
        on_change: Callable[[CircuitState], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = failure_threshold
        self._reset_after = reset_after_s
        self._on_change = on_change
        self._clock = clock
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_out = False

    @property
    def state(self) -> CircuitState:
        if self._state is CircuitState.OPEN and self._clock() - self._opened_at >= self._reset_after:
            self._set(CircuitState.HALF_OPEN)
        return self._state

    def available(self) -> bool:
        """Could a request go here now? (Does not take the half-open probe slot.)"""
        state = self.state
        return state is CircuitState.CLOSED or (state is CircuitState.HALF_OPEN and not self._probe_out)

    def acquire(self) -> bool:
        """Take permission for one request; in half-open only the first caller gets it (the probe)."""
        state = self.state
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.HALF_OPEN and not self._probe_out:
            self._probe_out = True
            return True
        return False

    def retry_after(self) -> float:
        """Seconds until this replica may be tried again (0 if it may be tried now)."""
        if self.state is not CircuitState.OPEN:
            return 0.0
        return max(0.0, self._reset_after - (self._clock() - self._opened_at))

    def record_success(self) -> None:
        self._failures = 0
        self._probe_out = False
        if self._state is not CircuitState.CLOSED:
            self._set(CircuitState.CLOSED)

    def record_failure(self) -> None:
        self._probe_out = False
        self._failures += 1
        if self._state is CircuitState.HALF_OPEN or self._failures >= self._threshold:
            self._opened_at = self._clock()
            self._set(CircuitState.OPEN)

    def release_probe(self) -> None:
        """The probe ended without a verdict (e.g. the client went away): let another one try."""
        self._probe_out = False

    def _set(self, state: CircuitState) -> None:
        self._state = state
        if self._on_change:
            self._on_change(state)
