"""SIGTERM to a gateway under streaming load drains it: /readyz fails at once, new requests are still served
for the drain delay, then it stops listening; every stream in flight ends with its [DONE], what it holds
(the inference log) is written, and the process exits within the delay plus the grace period. A real
gateway process (one worker and two) in front of the Ollama double."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testkit.ollama import OllamaDoubleControl, running_ollama_double
from testkit.processes import Service, wait_until
from tests.support.gateway import ADMIN_KEY, start_gateway

MODEL = "smollm2:135m"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
DELAY_S, GRACE_S = 2.0, 15.0
STREAMS = 5


@pytest.fixture(scope="module")
def double() -> Iterator[Service]:
    with running_ollama_double(tokens=12) as service:
        yield service


def stream_to_end(gateway: Service, ends: list[str]) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "tell me"}], "stream": True}
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body, headers=AUTH, timeout=60) as r:
        ends.append([line for line in r.iter_lines() if line][-1])


def listening(gateway: Service) -> bool:
    try:
        httpx.get(f"{gateway.url}/healthz", timeout=2)
    except httpx.ConnectError:
        return False
    return True


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_drains_streams_and_writes_what_it_holds_before_exiting(
    double: Service, tmp_path: Path, workers: int
) -> None:
    control = OllamaDoubleControl(double.url)
    control.reset()
    control.set(token_delay=0.4)  # ~5 s a stream: longer than the drain delay
    database = tmp_path / "gateway.db"
    gateway = start_gateway(
        [("ollama", double.url)],
        env={
            "GATEWAY_DRAIN_DELAY_S": str(DELAY_S),
            "GATEWAY_SHUTDOWN_GRACE_S": str(GRACE_S),
            "GATEWAY_WORKERS": str(workers),
            "GATEWAY_SQLITE_PATH": str(database),
            "GATEWAY_CAPTURE_PERCENT": "100",
        },
    )
    try:
        ends: list[str] = []
        streams = [threading.Thread(target=stream_to_end, args=(gateway, ends)) for _ in range(STREAMS)]
        for t in streams:
            t.start()
        wait_until(lambda: control.stats()["inflight"] == STREAMS, timeout=10, what="every stream running")
        assert gateway.proc is not None
        signalled = time.monotonic()
        gateway.proc.send_signal(signal.SIGTERM)

        wait_until(
            lambda: httpx.get(f"{gateway.url}/readyz", timeout=2).status_code == 503,
            timeout=1.0,
            what="/readyz failing at once",
        )
        assert httpx.get(f"{gateway.url}/readyz", timeout=2).json() == {"status": "draining"}
        late: list[int] = []

        def send_late() -> None:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "still there?"}]}
            response = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=AUTH, timeout=60)
            late.append(response.status_code)

        sender = threading.Thread(target=send_late)
        sender.start()
        wait_until(lambda: control.stats()["inflight"] == STREAMS + 1, timeout=DELAY_S, what="the late request in")
        assert time.monotonic() - signalled < DELAY_S, "the checks above took longer than the delay"

        wait_until(lambda: not listening(gateway), timeout=GRACE_S, what="the gateway to stop listening")
        stopped = time.monotonic() - signalled
        assert DELAY_S - 0.2 <= stopped < DELAY_S + 2, f"stopped listening {stopped:.1f} s after SIGTERM"
        gateway.proc.wait(timeout=DELAY_S + GRACE_S)
        assert time.monotonic() - signalled < DELAY_S + GRACE_S
        for t in [*streams, sender]:
            t.join(10)
        assert ends == ["data: [DONE]"] * STREAMS
        assert late == [200], "a request sent during the drain delay was not served"
        assert control.stats()["streams"]["aborted"] == 0
        with sqlite3.connect(database) as db:
            captured = db.execute("SELECT count(*) FROM inferences").fetchone()[0]
        assert captured == STREAMS + 1, "the inference log lost what the gateway held at exit"
    finally:
        gateway.stop()
