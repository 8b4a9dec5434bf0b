"""Every fault knob of the Ollama double, as the real `ollama` and `openai` clients see it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

import ollama
from testkit.ollama import OllamaDoubleControl, running_ollama_double, start_ollama_double
from testkit.processes import REPO_ROOT, Service, wait_until
from tests.doubles.conftest import MODEL, QUESTION
from tests.doubles.ollama_serving import QUEUE_FULL_MESSAGE


@pytest.fixture
def oai(double: Service, control: OllamaDoubleControl) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{double.url}/v1", api_key="ollama", max_retries=0, timeout=10)


def test_fail_next_fails_that_many_inference_calls_with_the_status(
    client: ollama.Client, oai: openai.OpenAI, control: OllamaDoubleControl
) -> None:
    control.set(fail_next=2, fail_status=502)
    client.list()  # management endpoints never consume a fault
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model=MODEL, messages=QUESTION)
    assert err.value.status_code == 502 and "injected failure" in err.value.error
    with pytest.raises(openai.APIStatusError) as api_err:
        oai.chat.completions.create(model=MODEL, messages=QUESTION)
    assert api_err.value.status_code == 502 and api_err.value.body["type"] == "api_error"
    assert client.chat(model=MODEL, messages=QUESTION).done
    stats = control.stats()
    assert stats["faults"] == {"fail": 2} and stats["knobs"]["fail_next"] == 0


def test_a_rejected_request_does_not_consume_a_fault(client: ollama.Client, control: OllamaDoubleControl) -> None:
    control.set(fail_next=1)
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="unknown:1b", messages=QUESTION)
    assert err.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model=MODEL, prompt="now it fails")
    assert err.value.status_code == 500


def test_queue_full_answers_503_like_ollama(
    client: ollama.Client, oai: openai.OpenAI, control: OllamaDoubleControl
) -> None:
    control.set(queue_full_next=2)
    with pytest.raises(ollama.ResponseError) as err:
        list(client.generate(model=MODEL, prompt="busy?", stream=True))
    assert err.value.status_code == 503 and err.value.error == QUEUE_FULL_MESSAGE
    with pytest.raises(openai.APIStatusError) as api_err:
        oai.completions.create(model=MODEL, prompt="busy?")
    assert api_err.value.status_code == 503
    assert client.generate(model=MODEL, prompt="free now").done


def test_die_mid_stream_breaks_the_native_stream_after_k_tokens(
    client: ollama.Client, control: OllamaDoubleControl, double: Service
) -> None:
    control.set(die_mid_stream_next=1, die_after_tokens=3)
    received = []
    with pytest.raises(httpx.RemoteProtocolError):
        for part in client.chat(model=MODEL, messages=QUESTION, stream=True):
            received.append(part)
    assert len(received) == 3 and not any(p.done for p in received)
    assert client.chat(model=MODEL, messages=QUESTION).done  # only the next one dies
    assert "Traceback" not in double.logs()  # a deliberate cut is not logged as a crash


def test_die_mid_stream_cuts_raw_chunked_body(double: Service, control: OllamaDoubleControl) -> None:
    control.set(die_mid_stream_next=1, die_after_tokens=1)
    lines = []
    with (
        pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"),
        httpx.stream("POST", f"{double.url}/api/generate", json={"model": MODEL, "prompt": "x"}) as r,
    ):
        assert r.status_code == 200
        lines.extend(r.iter_lines())
    assert len([line for line in lines if line]) == 1


def test_die_mid_stream_in_whole_answers_and_embeddings(
    client: ollama.Client, oai: openai.OpenAI, control: OllamaDoubleControl
) -> None:
    control.set(die_mid_stream_next=3)
    with pytest.raises(httpx.RemoteProtocolError):
        client.generate(model=MODEL, prompt="whole")
    with pytest.raises(httpx.RemoteProtocolError):
        client.embed(model=MODEL, input="vector")
    with pytest.raises(openai.APIConnectionError):
        oai.chat.completions.create(model=MODEL, messages=QUESTION)
    assert control.stats()["faults"] == {"die_mid_stream": 3}


def test_die_mid_stream_breaks_an_openai_stream(oai: openai.OpenAI, control: OllamaDoubleControl) -> None:
    control.set(die_mid_stream_next=1, die_after_tokens=2)
    seen = []
    with pytest.raises((httpx.RemoteProtocolError, openai.APIError)):
        for chunk in oai.chat.completions.create(model=MODEL, messages=QUESTION, stream=True):
            seen.append(chunk)
    assert len(seen) == 2


def test_error_line_ends_a_200_stream_with_an_error_object(
    client: ollama.Client, double: Service, control: OllamaDoubleControl
) -> None:
    control.set(error_line_next=2, die_after_tokens=2)
    received = []
    with pytest.raises(ollama.ResponseError, match="mid-stream"):
        for part in client.generate(model=MODEL, prompt="x", stream=True):
            received.append(part)
    assert len(received) == 2
    with httpx.stream("POST", f"{double.url}/api/chat", json={"model": MODEL, "messages": QUESTION}) as r:
        assert r.status_code == 200
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert len(lines) == 3 and set(lines[-1]) == {"error"}
    assert not any(line.get("done") for line in lines)


def test_error_line_on_openai_stream_has_no_done_marker(double: Service, control: OllamaDoubleControl) -> None:
    control.set(error_line_next=1, die_after_tokens=1)
    body = {"model": MODEL, "messages": QUESTION, "stream": True}
    with httpx.stream("POST", f"{double.url}/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        events = [line for line in r.iter_lines() if line]
    assert len(events) == 2 and "data: [DONE]" not in events
    assert json.loads(events[-1][6:])["error"]["message"].startswith("injected error")


def test_error_line_in_a_whole_answer_is_a_500(client: ollama.Client, control: OllamaDoubleControl) -> None:
    control.set(error_line_next=1)
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model=MODEL, messages=QUESTION)
    assert err.value.status_code == 500


def test_hang_holds_the_request_until_reset(client: ollama.Client, control: OllamaDoubleControl) -> None:
    control.set(hang_next=1)
    with ThreadPoolExecutor(1) as pool:
        hung = pool.submit(client.chat, model=MODEL, messages=QUESTION)
        wait_until(lambda: control.stats()["inflight"] == 1, timeout=10, what="hung request accepted")
        assert client.chat(model=MODEL, messages=QUESTION).done  # others are still served
        assert not hung.done() and control.stats()["inflight"] == 1
        control.reset()
        with pytest.raises(ollama.ResponseError) as err:
            hung.result(timeout=10)
    assert err.value.status_code == 503


def test_token_delay_spaces_the_chunks(client: ollama.Client, control: OllamaDoubleControl) -> None:
    # lower bounds only, from the request's start: a busy client may read two chunks at once,
    # but the server cannot send the fifth token before four delays have passed
    control.set(token_delay=0.05)
    started = time.monotonic()
    parts = list(client.generate(model=MODEL, prompt="slow", options={"num_predict": 5}, stream=True))
    assert time.monotonic() - started >= 0.2
    assert len(parts) == 6 and parts[-1].eval_duration >= 0.19e9
    started = time.monotonic()
    reply = client.generate(model=MODEL, prompt="slow", options={"num_predict": 5})
    assert time.monotonic() - started >= 0.2 and reply.eval_duration >= 0.19e9
    control.set(token_delay=0)
    assert client.generate(model=MODEL, prompt="slow", options={"num_predict": 5}).eval_duration < 0.19e9


def test_a_client_that_leaves_mid_stream_is_counted(double: Service, control: OllamaDoubleControl) -> None:
    control.set(token_delay=0.05)
    with httpx.stream("POST", f"{double.url}/api/chat", json={"model": MODEL, "messages": QUESTION}) as r:
        next(r.iter_lines())
    wait_until(lambda: control.stats()["streams"]["aborted"] == 1, timeout=10, what="abandoned stream seen")
    assert control.stats()["streams"]["completed"] == 0


@pytest.mark.parametrize(
    "change", [{"fail_nxt": 1}, {"fail_next": -1}, {"fail_next": 1.5}, {"token_delay": "fast"}, {"hang_next": True}]
)
def test_control_rejects_bad_knobs(double: Service, control: OllamaDoubleControl, change: dict) -> None:
    response = httpx.post(f"{double.url}/_control", json=change)
    assert response.status_code == 400 and response.json()["error"]
    assert control.stats()["knobs"]["fail_next"] == 0


def test_request_bodies_kept_are_bounded(client: ollama.Client, control: OllamaDoubleControl) -> None:
    for i in range(25):
        client.embed(model=MODEL, input=f"text {i}")
    stats = control.stats()
    assert stats["calls"]["/api/embed"] == 25
    assert [b["input"] for b in stats["bodies"]["/api/embed"]] == [f"text {i}" for i in range(5, 25)]


def test_knobs_can_be_set_at_start() -> None:
    with running_ollama_double(fail_next=1, tokens=4, token_delay=0.0) as service:
        local = ollama.Client(host=service.url, timeout=10)
        with pytest.raises(ollama.ResponseError):
            local.chat(model=MODEL, messages=QUESTION)
        assert local.chat(model=MODEL, messages=QUESTION).eval_count == 4
        # reset goes back to the start values, faults included
        OllamaDoubleControl(service.url).reset()
        with pytest.raises(ollama.ResponseError):
            local.chat(model=MODEL, messages=QUESTION)


def test_sigterm_ends_the_double_promptly_even_with_a_hung_request() -> None:
    service = start_ollama_double(hang_next=1)
    local = ollama.Client(host=service.url, timeout=30)
    control = OllamaDoubleControl(service.url)
    with ThreadPoolExecutor(1) as pool:
        hung = pool.submit(local.chat, model=MODEL, messages=QUESTION)
        wait_until(lambda: control.stats()["inflight"] == 1, timeout=10, what="hung request accepted")
        started = time.monotonic()
        service.stop(timeout=8)  # SIGTERM, then SIGKILL after 8 s
        # uvicorn re-raises SIGTERM after its shutdown, so -15 (or 0) is a clean end; -9 is not
        assert service.proc.returncode in (0, -signal.SIGTERM) and time.monotonic() - started < 8
        with pytest.raises((ollama.ResponseError, httpx.HTTPError, ConnectionError)):  # died with the server
            hung.result(timeout=10)


def test_start_helper_refuses_unknown_knobs() -> None:
    with pytest.raises(TypeError, match="fail_nxt"):
        start_ollama_double(fail_nxt=1)


@pytest.mark.parametrize(
    "args,fragment",
    [(["--port", "0"], "--port"), (["--fail-next", "-2"], "fail_next"), (["--tokens", "many"], "invalid int")],
)
def test_cli_rejects_bad_arguments_without_a_traceback(args: list[str], fragment: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tests.doubles.ollama_double", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert fragment in done.stderr and "Traceback" not in done.stderr


async def test_async_client_sees_cuts_and_error_lines(double: Service, control: OllamaDoubleControl) -> None:
    aclient = ollama.AsyncClient(host=double.url, timeout=10)
    control.set(die_mid_stream_next=1, die_after_tokens=2)
    received = []
    with pytest.raises(httpx.RemoteProtocolError):
        async for part in await aclient.chat(model=MODEL, messages=QUESTION, stream=True):
            received.append(part)
    assert len(received) == 2
    control.set(error_line_next=1, die_after_tokens=1)
    received.clear()
    with pytest.raises(ollama.ResponseError, match="mid-stream"):
        async for part in await aclient.generate(model=MODEL, prompt="x", stream=True):
            received.append(part)
    assert len(received) == 1
