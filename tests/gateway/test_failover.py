"""Several replicas: failover before the first byte, circuit breaking, and honest broken streams."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import openai
import pytest

from testkit.ollama import OllamaDoubleControl, running_ollama_double
from testkit.processes import Service, wait_until
from tests.gateway.conftest import MODEL
from tests.support.gateway import ADMIN_KEY, running_gateway

HI = [{"role": "user", "content": "hi"}]
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def two_doubles() -> Iterator[tuple[Service, Service]]:
    with running_ollama_double(tokens=6) as a, running_ollama_double(tokens=6) as b:
        yield a, b


def sdk(gw: Service) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=30)


def sse_events(gw: Service, body: dict) -> tuple[int, list[str]]:
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=30) as r:
        if r.status_code != 200:
            r.read()
            return r.status_code, [r.text]
        return 200, [line[6:] for line in r.iter_lines() if line.startswith("data: ")]


def test_killing_a_replica_mid_run_loses_no_plain_request(two_doubles: tuple[Service, Service]) -> None:
    a, b = two_doubles
    with running_gateway([("ollama", a.url), ("ollama", b.url)]) as gw:
        client = sdk(gw)
        failures: list[BaseException] = []
        done = 0
        lock = threading.Lock()
        killed = threading.Event()

        def worker() -> None:
            nonlocal done
            for _ in range(40):
                try:
                    r = client.chat.completions.create(model=MODEL, messages=HI)
                    assert r.choices[0].message.content
                except BaseException as exc:
                    failures.append(exc)
                with lock:
                    done += 1
                    if done == 30:
                        a.kill()
                        killed.set()

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert killed.is_set() and done == 160
        assert failures == []
        calls_b = OllamaDoubleControl(b.url).calls("/api/chat")
        assert 80 < calls_b < 160  # b took the load after a died, and a had served some before
        ready = httpx.get(gw.url + "/readyz").json()
        assert ready["status"] == "ready"


def test_breaker_opens_fails_fast_then_half_opens_and_closes() -> None:
    with (
        running_ollama_double(tokens=4) as d,
        running_gateway(
            [("ollama", d.url)], env={"GATEWAY_BREAKER_FAILURES": "2", "GATEWAY_BREAKER_RESET_S": "3"}
        ) as gw,
    ):
        control = OllamaDoubleControl(d.url)
        body = {"model": MODEL, "messages": HI}
        control.set(fail_next=3, fail_status=500)
        assert httpx.post(gw.url + "/v1/chat/completions", json=body, headers=AUTH).status_code == 502
        assert httpx.post(gw.url + "/v1/chat/completions", json=body, headers=AUTH).status_code == 502
        # open: answered at once, without calling the backend
        before = control.calls("/api/chat")
        r = httpx.post(gw.url + "/v1/chat/completions", json=body, headers=AUTH)
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "no_healthy_backend"
        assert control.calls("/api/chat") == before
        circuit = lambda: httpx.get(gw.url + "/admin/health", headers=AUTH).json()["backends"][d.url[7:]]["circuit"]
        assert circuit() == "open"
        wait_until(lambda: circuit() == "half_open", timeout=5, what="circuit half-open")
        # the probe fails (one armed failure left): open again
        assert httpx.post(gw.url + "/v1/chat/completions", json=body, headers=AUTH).status_code == 502
        assert circuit() == "open"
        wait_until(lambda: circuit() == "half_open", timeout=5, what="circuit half-open again")
        assert httpx.post(gw.url + "/v1/chat/completions", json=body, headers=AUTH).status_code == 200
        assert circuit() == "closed"
        metrics = httpx.get(gw.url + "/metrics").text
        assert f'gateway_circuit_state{{backend="{d.url[7:]}"}} 0.0' in metrics


def test_stream_fails_over_before_the_first_byte(two_doubles: tuple[Service, Service]) -> None:
    a, b = two_doubles
    with running_gateway([("ollama", a.url), ("ollama", b.url)]) as gw:
        results = []
        for replica in (a, b):  # one replica refuses (503, queue full); rotation sends a request to it
            OllamaDoubleControl(replica.url).set(queue_full_next=1)
            results += [sse_events(gw, {"model": MODEL, "messages": HI, "stream": True}) for _ in range(2)]
        assert all(status == 200 and events[-1] == "[DONE]" for status, events in results), results
        faults = [OllamaDoubleControl(x.url).stats()["faults"].get("queue_full", 0) for x in (a, b)]
        assert faults == [1, 1]
        assert 'gateway_failovers_total{model="smollm2:135m"}' in httpx.get(gw.url + "/metrics").text


def test_hung_replica_is_skipped_after_first_token_timeout(two_doubles: tuple[Service, Service]) -> None:
    a, b = two_doubles
    env = {"GATEWAY_FIRST_TOKEN_TIMEOUT_S": "0.5"}
    with running_gateway([("ollama", a.url), ("ollama", b.url)], env=env) as gw:
        for replica in (a, b):
            OllamaDoubleControl(replica.url).set(hang_next=1)
            for _ in range(2):
                status, events = sse_events(gw, {"model": MODEL, "messages": HI, "stream": True})
                assert status == 200 and events[-1] == "[DONE]"
            assert OllamaDoubleControl(replica.url).stats()["faults"]["hang"] == 1
    for x in (a, b):
        OllamaDoubleControl(x.url).reset()  # release the hung handlers


def test_hung_backend_never_holds_a_plain_request_past_the_total_timeout() -> None:
    with running_ollama_double() as d, running_gateway([("ollama", d.url)], env={"GATEWAY_TOTAL_TIMEOUT_S": "1"}) as gw:
        control = OllamaDoubleControl(d.url)
        control.set(hang_next=1)
        r = httpx.post(gw.url + "/v1/chat/completions", json={"model": MODEL, "messages": HI}, headers=AUTH, timeout=10)
        assert r.status_code == 504 and r.json()["error"]["code"] == "backend_timeout"
        control.reset()


def test_a_stream_still_going_at_the_total_timeout_ends_with_a_timeout_event() -> None:
    with (
        running_ollama_double(tokens=20, token_delay=0.2) as d,
        running_gateway([("ollama", d.url)], env={"GATEWAY_TOTAL_TIMEOUT_S": "1"}) as gw,
    ):
        status, events = sse_events(gw, {"model": MODEL, "messages": HI, "stream": True})
    assert status == 200 and '"choices"' in events[0]  # tokens flowed before the deadline
    assert "[DONE]" not in events  # cut by the 1 s deadline (20 tokens 0.2 s apart take 4 s) ...
    assert '"backend_timeout"' in events[-1]  # ... and said so
    assert len([e for e in events if '"choices"' in e]) < 20


@pytest.mark.parametrize("fault", ["die_mid_stream_next", "error_line_next"])
def test_broken_stream_ends_with_an_error_event_not_done(fault: str) -> None:
    with running_ollama_double(tokens=8) as d, running_gateway([("ollama", d.url)]) as gw:
        OllamaDoubleControl(d.url).set(**{fault: 1}, die_after_tokens=2)
        status, events = sse_events(gw, {"model": MODEL, "messages": HI, "stream": True})
        assert status == 200
        assert "[DONE]" not in events
        assert '"error"' in events[-1] and '"choices"' in events[0]
        # the real SDK surfaces it as an error, not as a short answer
        OllamaDoubleControl(d.url).set(**{fault: 1}, die_after_tokens=2)
        with pytest.raises(openai.APIError):
            for _ in sdk(gw).chat.completions.create(model=MODEL, messages=HI, stream=True):
                pass


def test_every_replica_open_answers_503_at_once(two_doubles: tuple[Service, Service]) -> None:
    a, b = two_doubles
    env = {"GATEWAY_BREAKER_FAILURES": "1", "GATEWAY_BREAKER_RESET_S": "30"}
    with running_gateway([("ollama", a.url), ("ollama", b.url)], env=env) as gw:
        a.kill()
        b.kill()
        first = httpx.post(gw.url + "/v1/chat/completions", json={"model": MODEL, "messages": HI}, headers=AUTH)
        assert first.status_code == 502  # both tried, both refused
        r = httpx.post(gw.url + "/v1/chat/completions", json={"model": MODEL, "messages": HI}, headers=AUTH)
        assert r.status_code == 503 and 1 <= int(r.headers["retry-after"]) <= 30
        assert r.elapsed.total_seconds() < 1.0
