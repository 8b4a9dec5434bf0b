"""CircuitBreaker state machine, on a controlled clock."""

from __future__ import annotations

from gateway.replicas.breaker import CircuitBreaker, CircuitState


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def make(threshold: int = 3, reset: float = 10.0) -> tuple[CircuitBreaker, Clock, list[CircuitState]]:
    clock, changes = Clock(), []
    return (
        CircuitBreaker(failure_threshold=threshold, reset_after_s=reset, clock=clock, on_change=changes.append),
        clock,
        changes,
    )


def test_opens_after_consecutive_failures_only() -> None:
    b, _, _ = make()
    b.record_failure()
    b.record_failure()
    b.record_success()
    b.record_failure()
    b.record_failure()
    assert b.state is CircuitState.CLOSED and b.acquire()
    b.record_failure()
    assert b.state is CircuitState.OPEN and not b.acquire() and not b.available()
    assert b.retry_after() == 10.0


def test_half_open_lets_exactly_one_probe_through() -> None:
    b, clock, changes = make(threshold=1)
    b.record_failure()
    clock.t += 9.9
    assert not b.acquire() and 0 < b.retry_after() < 0.2
    clock.t += 0.1
    assert b.state is CircuitState.HALF_OPEN
    assert b.acquire() and not b.acquire() and not b.available()
    b.record_success()
    assert b.state is CircuitState.CLOSED and b.acquire()
    assert changes == [CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.CLOSED]


def test_failed_probe_reopens_for_a_full_period() -> None:
    b, clock, _ = make(threshold=5)
    for _ in range(5):
        b.record_failure()
    clock.t += 10
    assert b.acquire()
    b.record_failure()  # one failure in half-open is enough
    assert b.state is CircuitState.OPEN and b.retry_after() == 10.0


def test_abandoned_probe_frees_the_slot() -> None:
    b, clock, _ = make(threshold=1)
    b.record_failure()
    clock.t += 10
    assert b.acquire() and not b.acquire()
    b.release_probe()
    assert b.acquire()
