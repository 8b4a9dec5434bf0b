"""Every bad input gets its status and OpenAI's error shape; never a 500 or a traceback."""

from __future__ import annotations

import httpx
import openai
import pytest

from testkit.ollama import OllamaDoubleControl
from testkit.processes import Service, free_port
from tests.gateway.conftest import MODEL
from tests.support.gateway import ADMIN_KEY, running_gateway

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
HI = [{"role": "user", "content": "hi"}]


def assert_openai_error(r: httpx.Response, status: int, *, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "code"} and err["message"]
    assert "Traceback" not in r.text
    if param is not None:
        assert err["param"] == param, err
    return err


def post(
    gateway: Service, body: bytes | dict, path: str = "/v1/chat/completions", headers: dict[str, str] | None = None
) -> httpx.Response:
    headers = {**AUTH, "content-type": "application/json", **(headers or {})}
    if isinstance(body, dict):
        return httpx.post(gateway.url + path, json=body, headers=headers)
    return httpx.post(gateway.url + path, content=body, headers=headers)


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b'"text"'])
def test_malformed_json_is_400(gateway: Service, raw: bytes) -> None:
    assert_openai_error(post(gateway, raw), 400)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": HI}, "model"),
        ({"model": MODEL}, "messages"),
        ({"model": MODEL, "messages": []}, "messages"),
        ({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"model": MODEL, "messages": HI, "temperature": 9}, "temperature"),
        ({"model": MODEL, "messages": HI, "max_tokens": 0}, "max_tokens"),
        ({"model": MODEL, "messages": HI, "stream": "yes please"}, "stream"),
    ],
)
def test_schema_violation_names_the_field(gateway: Service, body: dict, param: str) -> None:
    err = assert_openai_error(post(gateway, body), 400, param=param)
    assert param.split(".")[0] in err["message"]


def test_unknown_model_is_404(gateway: Service) -> None:
    err = assert_openai_error(post(gateway, {"model": "no-such-model", "messages": HI}), 404, param="model")
    assert err["code"] == "model_not_found"


def test_body_over_cap_is_413(gateway: Service) -> None:
    big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 70_000}]}
    assert_openai_error(post(gateway, big), 413)


def test_chunked_body_over_cap_is_413(gateway: Service) -> None:
    def chunks():
        for _ in range(40):
            yield b"x" * 4096

    r = httpx.post(
        gateway.url + "/v1/chat/completions", content=chunks(), headers={**AUTH, "content-type": "application/json"}
    )
    assert_openai_error(r, 413)


@pytest.mark.parametrize("chunked", [False, True])
def test_body_over_cap_is_413_on_every_route(gateway: Service, chunked: bool) -> None:
    """Routes other than inference go through FastAPI; the same cap and error shape apply there."""
    body = b'{"name": "' + b"x" * 70_000 + b'"}'
    content = (body[i : i + 4096] for i in range(0, len(body), 4096)) if chunked else body
    r = httpx.post(gateway.url + "/admin/keys", content=content, headers={**AUTH, "content-type": "application/json"})
    assert_openai_error(r, 413)
    assert r.headers["x-request-id"]


def test_backend_4xx_is_passed_on(gateway: Service, control: OllamaDoubleControl) -> None:
    control.set(fail_next=1, fail_status=400)
    err = assert_openai_error(post(gateway, {"model": MODEL, "messages": HI}), 400)
    assert err["code"] == "backend_rejected"
    # a 4xx is the request's fault, not the replica's: the next call is served
    assert post(gateway, {"model": MODEL, "messages": HI}).status_code == 200


@pytest.mark.parametrize("stream", [False, True])
def test_unsupported_n_is_400_not_500(gateway: Service, stream: bool) -> None:
    assert_openai_error(post(gateway, {"model": MODEL, "messages": HI, "n": 2, "stream": stream}), 400, param="n")


def test_missing_and_wrong_key_are_401(gateway: Service) -> None:
    r = httpx.post(gateway.url + "/v1/chat/completions", json={"model": MODEL, "messages": HI})
    assert_openai_error(r, 401)
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = httpx.post(
        gateway.url + "/v1/chat/completions",
        json={"model": MODEL, "messages": HI},
        headers={"Authorization": "Bearer sk-wrong"},
    )
    assert_openai_error(r, 401)


def test_unknown_route_is_404_in_openai_shape(gateway: Service) -> None:
    assert_openai_error(httpx.get(gateway.url + "/v1/nothing-here", headers=AUTH), 404)


def test_wrong_method_is_405_in_openai_shape(gateway: Service) -> None:
    assert_openai_error(httpx.get(gateway.url + "/v1/chat/completions", headers=AUTH), 405)


def test_request_id_is_echoed_or_created(gateway: Service) -> None:
    r = post(gateway, {"model": MODEL, "messages": HI}, headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r2 = post(gateway, {"model": MODEL, "messages": HI})
    assert len(r2.headers["x-request-id"]) == 32
    odd = post(gateway, {"model": MODEL, "messages": HI}, headers={"X-Request-ID": "not ok; " + "x" * 200})
    assert len(odd.headers["x-request-id"]) == 32, "an unsafe incoming id is replaced"
    other_route = httpx.get(gateway.url + "/v1/models", headers={**AUTH, "X-Request-ID": "models-1"})
    assert other_route.headers["x-request-id"] == "models-1"


def test_never_reachable_backend_means_unknown_model_and_unready() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with running_gateway([("ollama", dead)]) as gw:
        r = post(gw, {"model": MODEL, "messages": HI})
        # nothing was ever discovered, so the model is unknown: 404 is the honest answer
        assert_openai_error(r, 404)
        ready = httpx.get(gw.url + "/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "unready"


def test_sdk_raises_typed_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="missing", messages=HI)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=HI, temperature=5)
