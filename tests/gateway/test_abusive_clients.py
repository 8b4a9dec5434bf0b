"""What a key holder cannot do: freeze a worker with a schema, get tokens free by hanging up, steer a rollout
or another key's training data with feedback, tune the shared Ollama server, amplify model discovery, learn
other keys' prompts from the cache, or read the gateway's internals without an admin key. Through real
gateway processes, a real redis-server and the Ollama double."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from testkit.ollama import OllamaDoubleControl
from testkit.processes import wait_until
from tests.support.policy_stack import ADMIN_KEY, MODEL, PolicyStack, chat_body

OTHER_MODEL = "llama3.2:1b"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def bomb(levels: int) -> dict[str, Any]:
    """Each level an allOf of two references to the level below: 2**levels subschemas, a small document."""
    defs: dict[str, Any] = {
        f"l{i}": {"allOf": [{"$ref": f"#/$defs/l{i + 1}"}, {"$ref": f"#/$defs/l{i + 1}"}]} for i in range(levels)
    }
    defs[f"l{levels}"] = {"type": "object"}
    return {"$ref": "#/$defs/l0", "$defs": defs}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat(stack: PolicyStack, key: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{stack.url}/v1/chat/completions", json=chat_body(**body), headers=auth(key), timeout=30)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    database = tmp_path_factory.mktemp("store") / "gateway.db"
    s = PolicyStack.start(GATEWAY_SQLITE_PATH=str(database), GATEWAY_CAPTURE_PERCENT="100")
    s.database = database  # type: ignore[attr-defined]
    yield s
    s.stop()


@pytest.fixture
def control(stack: PolicyStack):
    control = OllamaDoubleControl(stack.double.url)
    yield control
    control.reset()


# -- 1. one small request freezes a worker ---------------------------------------------------------------------


def test_a_schema_bomb_is_refused_at_once_naming_the_limit_and_the_gateway_stays_responsive(stack) -> None:
    key = stack.create_key()
    response_format = {"type": "json_schema", "json_schema": {"name": "bomb", "schema": bomb(19)}}

    async def run() -> tuple[list[httpx.Response], list[float]]:
        async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
            bombs = [
                client.post("/v1/chat/completions", json=chat_body(response_format=response_format), headers=auth(key))
                for _ in range(8)
            ]
            sent = asyncio.gather(*bombs)
            probes = []
            for _ in range(10):
                started = time.perf_counter()
                assert (await client.get("/healthz")).status_code == 200
                probes.append(time.perf_counter() - started)
            return await sent, probes

    answers, probes = asyncio.run(run())
    assert {a.status_code for a in answers} == {400}
    error = answers[0].json()["error"]
    assert error["param"] == "response_format" and "subschemas" in error["message"] or "levels" in error["message"]
    assert max(probes) < 1.0, probes


def test_tool_schemas_and_stop_lists_are_bounded_too(stack) -> None:
    key = stack.create_key()
    tool = {"type": "function", "function": {"name": "f", "parameters": bomb(19)}}
    refused = chat(stack, key, tools=[tool])
    assert refused.status_code == 400 and "tools[0].function.parameters" in refused.json()["error"]["message"]
    too_many = chat(stack, key, stop=[f"s{i}" for i in range(40)])
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "stop"
    assert chat(stack, key, stop=["\n\n", "END"]).status_code == 200


# -- 2. free tokens by hanging up ----------------------------------------------------------------------------


def output_tokens(stack: PolicyStack, key: str) -> int:
    answer = httpx.get(f"{stack.url}/v1/usage", headers=auth(key), timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()["totals"]["output_tokens"]


def read_chunks(stack: PolicyStack, key: str, wanted: int, **body: Any) -> int:
    """Stream a chat and hang up after `wanted` content chunks (or at the end); the chunks read."""
    read = 0
    with httpx.stream(
        "POST", f"{stack.url}/v1/chat/completions", json=chat_body(stream=True, **body), headers=auth(key), timeout=30
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:]).get("choices"):
                read += bool(json.loads(line[6:])["choices"][0]["delta"].get("content"))
                if read >= wanted:
                    break
    return read


def test_a_stream_the_client_closes_is_charged_what_it_streamed(stack, control) -> None:
    key = stack.create_key(monthly_token_budget=1500)
    control.set(tokens=40, token_delay=0.05)
    read = read_chunks(stack, key, 20, max_tokens=40)
    wait_until(lambda: output_tokens(stack, key) >= read, timeout=10, what="the cut stream's tokens charged")


def test_a_stream_past_its_deadline_is_charged_what_it_streamed(control, tmp_path: Path) -> None:
    short = PolicyStack.start(GATEWAY_TOTAL_TIMEOUT_S="1", double_knobs={"tokens": 40, "token_delay": 0.1})
    try:
        key = short.create_key(monthly_token_budget=1500)
        read = read_chunks(short, key, 40, max_tokens=40)  # the gateway ends it with an error event
        assert 3 <= read < 40
        wait_until(lambda: output_tokens(short, key) >= read, timeout=10, what="the timed-out stream charged")
    finally:
        short.stop()


def test_a_stream_the_backend_cuts_is_charged_what_it_streamed(stack, control) -> None:
    key = stack.create_key(monthly_token_budget=1500)
    control.set(tokens=40, die_mid_stream_next=1, die_after_tokens=12)
    read = read_chunks(stack, key, 40, max_tokens=40)
    assert read >= 10
    wait_until(lambda: output_tokens(stack, key) >= read, timeout=10, what="the cut stream's tokens charged")


# -- 3. anyone can steer a rollout --------------------------------------------------------------------------


def feedback(stack: PolicyStack, key: str, request_id: str, **body: Any) -> httpx.Response:
    return httpx.post(
        f"{stack.url}/v1/feedback", json={"request_id": request_id, **body}, headers=auth(key), timeout=10
    )


def feedback_rows(stack: PolicyStack, request_id: str) -> list[tuple[str, str | None, str | None]]:
    with sqlite3.connect(stack.database) as db:  # type: ignore[attr-defined]
        rows = db.execute("SELECT kind, key_id, role FROM feedback WHERE request_id = ? ORDER BY id", (request_id,))
        return list(rows)


def test_only_the_key_that_made_a_request_can_rate_or_correct_it_and_others_learn_nothing(stack) -> None:
    owner, other = stack.create_key(name="owner"), stack.create_key(name="other")
    answered = chat(stack, owner, content="mine")
    request_id = answered.headers["X-Request-ID"]
    theirs = feedback(stack, other, request_id, rating="down", correction="a wrong target")
    unknown = feedback(stack, other, "no-such-request-anywhere", rating="down", correction="a wrong target")
    assert theirs.status_code == unknown.status_code == 202
    strip = lambda r: {k: v for k, v in r.json().items() if k != "request_id"}
    assert strip(theirs) == strip(unknown) and theirs.json()["model"] == "unknown"  # the same answer: nothing learned
    mine = feedback(stack, owner, request_id, rating="up", correction="the right target")
    assert mine.status_code == 201 and mine.json()["model"] == MODEL
    wait_until(lambda: len(feedback_rows(stack, request_id)) == 4, timeout=10, what="feedback stored")
    roles = {(kind, role) for kind, _, role in feedback_rows(stack, request_id)}
    assert roles == {
        ("rating", "unverified"),
        ("correction", "unverified"),
        ("rating", "owner"),
        ("correction", "owner"),
    }


def test_a_request_has_one_rating_and_feedback_costs_requests(stack) -> None:
    key = stack.create_key(rpm=4)
    request_id = chat(stack, key).headers["X-Request-ID"]
    for rating in ("down", "down", "up"):
        assert feedback(stack, key, request_id, rating=rating).status_code == 201
    ratings = [role for kind, _, role in feedback_rows(stack, request_id) if kind == "rating"]
    assert ratings == ["owner"]  # each rating replaced the one before
    limited = feedback(stack, key, request_id, rating="down")
    assert limited.status_code == 429  # one chat and three votes used the key's four requests a minute


def users_on(stack: PolicyStack, key: str, route: str, variant: str, prefix: str, count: int) -> list[str]:
    """`count` users the route's sticky split sends to `variant`, found by asking as each."""
    found: list[str] = []
    for i in range(200):
        user = f"{prefix}-{i}"
        answer = chat(stack, key, model=route, user=user, temperature=0.5)
        if answer.headers["X-Model-Variant"] == variant:
            found.append(user)
            if len(found) == count:
                return found
    raise AssertionError(f"fewer than {count} users of {route} land on {variant}")


def test_one_user_cannot_roll_a_canary_back_but_enough_distinct_users_do(stack) -> None:
    spec = {
        "variants": [{"model": MODEL, "weight": 50}, {"model": OTHER_MODEL, "weight": 50}],
        # The thumbs signal is under test; TTFT over a handful of samples on a shared host is noise that could
        # roll the canary back on its own, so its rule is left out of reach.
        "guard": {"min_requests": 1, "max_thumbs_down_delta": 0.1, "min_raters": 3, "max_ttft_p95_ratio": 100},
    }
    assert httpx.put(f"{stack.url}/admin/routes/steered", json=spec, headers=ADMIN, timeout=10).status_code == 200
    key = stack.create_key()
    canary_users = users_on(stack, key, "steered", OTHER_MODEL, "c", 3)
    stable_users = users_on(stack, key, "steered", MODEL, "s", 3)

    def rate(user: str, rating: str, times: int = 1) -> None:
        answer = chat(stack, key, model="steered", user=user, temperature=0.5)
        assert answer.status_code == 200
        for _ in range(times):
            assert feedback(stack, key, answer.headers["X-Request-ID"], rating=rating).status_code == 201

    def weights() -> dict[str, int]:
        route = httpx.get(f"{stack.url}/admin/routes/steered", headers=ADMIN, timeout=10).json()
        return {v["model"]: v["weight"] for v in route["variants"]}

    for user in stable_users[:3]:
        rate(user, "up")
    rate(canary_users[0], "down", times=3)  # one user, one answer, voting again and again
    rate(canary_users[0], "down")  # and a second answer of the same user
    time.sleep(1.0)  # four guard rounds
    assert weights() == {MODEL: 50, OTHER_MODEL: 50}
    stats = httpx.get(f"{stack.url}/admin/routes/steered/stats", headers=ADMIN, timeout=10).json()
    assert stats["variants"][OTHER_MODEL]["thumbs_down"] == 2 and stats["variants"][OTHER_MODEL]["raters"] == 1
    for user in canary_users[1:3]:  # two more users agree: the signal acts
        rate(user, "down")
    wait_until(lambda: weights()[OTHER_MODEL] == 0, timeout=5, what="the canary rolled back")
    history = httpx.get(f"{stack.url}/admin/routes/steered/history", headers=ADMIN, timeout=10).json()["history"]
    assert history[0]["reason"]["signal"] == "thumbs_down" and history[0]["reason"]["canary_raters"] == 3


# -- 4. Ollama tuning passed straight through ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"options": {"num_ctx": 1048576}}, "options.num_ctx"),
        ({"options": {"num_predict": -1}}, "options.num_predict"),
        ({"options": {"num_gpu": 999}}, "options.num_gpu"),
        ({"keep_alive": -1}, "keep_alive"),
        ({"max_tokens": 1_000_000}, "max_tokens"),
    ],
)
def test_server_options_a_request_may_not_set_are_refused_naming_them(stack, control, extra, param) -> None:
    key = stack.create_key()
    before = control.stats()["calls"].get("/api/chat", 0)
    refused = chat(stack, key, **{"max_tokens": 8, **extra})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == param
    assert control.stats()["calls"].get("/api/chat", 0) == before  # nothing reached the server


def test_sampling_options_pass_and_an_uncapped_request_gets_the_gateways_cap(stack, control) -> None:
    key = stack.create_key()
    assert chat(stack, key, options={"top_k": 7, "num_ctx": 4096}).status_code == 200
    assert control.last_body("/api/chat")["options"]["top_k"] == 7
    body = chat_body()
    del body["max_tokens"]
    assert httpx.post(f"{stack.url}/v1/chat/completions", json=body, headers=auth(key), timeout=30).status_code == 200
    options = control.last_body("/api/chat")["options"]
    assert options["num_predict"] == 4096 and "keep_alive" not in control.last_body("/api/chat")


# -- 5. discovery amplification -----------------------------------------------------------------------------


def test_unknown_models_share_one_refresh_and_cost_the_callers_requests(stack, control) -> None:
    key = stack.create_key(rpm=1000)
    time.sleep(1.1)  # past the last refresh's second

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
            answers = await asyncio.gather(
                *(
                    client.post("/v1/chat/completions", json=chat_body(model=f"nope-{i}"), headers=auth(key))
                    for i in range(50)
                )
            )
            return [a.status_code for a in answers]

    before = control.stats()["calls"].get("/api/tags", 0)
    assert set(asyncio.run(burst())) == {404}
    assert control.stats()["calls"].get("/api/tags", 0) - before <= 2  # one shared refresh (and maybe the timer)
    small = stack.create_key(rpm=3)
    codes = [chat(stack, small, model="nope").status_code for _ in range(4)]
    assert codes == [404, 404, 404, 429]


# -- 6. a cross-key oracle ----------------------------------------------------------------------------------


def test_one_key_cannot_tell_from_the_cache_what_another_key_asked(stack) -> None:
    first, second = stack.create_key(), stack.create_key()
    prompt = {"content": f"a prompt only the first key sends {time.time()}", "temperature": 0}
    assert chat(stack, first, **prompt).headers["X-Cache"] == "MISS"
    assert chat(stack, second, **prompt).headers["X-Cache"] == "MISS"
    assert chat(stack, first, **prompt).headers["X-Cache"] == "HIT"


# -- 7. internals without a key ----------------------------------------------------------------------------


def test_readiness_says_only_ready_and_the_details_and_schema_need_an_admin_key(stack) -> None:
    ready = httpx.get(f"{stack.url}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}
    assert httpx.get(f"{stack.url}/admin/health", timeout=10).status_code == 401
    details = httpx.get(f"{stack.url}/admin/health", headers=ADMIN, timeout=10).json()
    assert details["status"] == "ready" and details["backends"]["double"]["up"] is True
    key = stack.create_key()
    assert httpx.get(f"{stack.url}/openapi.json", timeout=10).status_code == 401
    assert httpx.get(f"{stack.url}/openapi.json", headers=auth(key), timeout=10).status_code == 403
    schema = httpx.get(f"{stack.url}/openapi.json", headers=ADMIN, timeout=10).json()
    assert "/v1/chat/completions" in schema["paths"]
    assert httpx.get(f"{stack.url}/docs", timeout=10).status_code == 404
