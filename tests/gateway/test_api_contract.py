"""The API's schema is its contract: what it bounds is refused with a 400 in OpenAI's shape (nothing stored),
every error status it answers is documented with the one error model, and its links lead from the
operations that make an identifier to those that take it. A real gateway with Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from testkit.processes import Service
from tests.support.gateway import ADMIN_KEY, running_gateway

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
MAX_OUTPUT_TOKENS = 256


@pytest.fixture(scope="module")
def gateway(double: Service, redis_server: Service) -> Iterator[Service]:
    env = {
        "REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/0",
        "GATEWAY_API_DOCS": "admin",
        "GATEWAY_MAX_OUTPUT_TOKENS": str(MAX_OUTPUT_TOKENS),
    }
    with running_gateway([("ollama", double.url)], env=env) as service:
        yield service


@pytest.fixture(scope="module")
def schema(gateway: Service) -> dict:
    response = httpx.get(f"{gateway.url}/openapi.json", headers=ADMIN, timeout=10)
    assert response.status_code == 200
    return response.json()


def key_ids(gateway: Service) -> set[str]:
    listed = httpx.get(f"{gateway.url}/admin/keys", headers=ADMIN, timeout=10)
    assert listed.status_code == 200
    return {k["id"] for k in listed.json()["data"]}


def post_key(gateway: Service, content: str) -> httpx.Response:
    """A raw JSON body, so numbers past 64 bits and odd floats reach the gateway exactly as written."""
    headers = {**ADMIN, "Content-Type": "application/json"}
    return httpx.post(f"{gateway.url}/admin/keys", content=content, headers=headers, timeout=10)


def assert_refused(response: httpx.Response, field: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == field, error
    assert field in error["message"] and "Traceback" not in response.text
    assert set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ('{"name": "big", "tpm": 699764250556884320256}', "tpm"),  # past 64 bits: the record could not be written
        ('{"name": "big", "monthly_token_budget": 1e30}', "monthly_token_budget"),
        ('{"name": "big", "rpm": 1000001}', "rpm"),
        ('{"name": "old", "expires_at": -2.2e-308}', "expires_at"),  # expired as it is made
        ('{"name": "nan", "capture_percent": NaN}', "capture_percent"),  # Python's JSON reader takes NaN
        ('{"name": "inf", "expires_at": Infinity}', "expires_at"),
        ('{"name": "far", "expires_in_days": 1e300}', "expires_in_days"),
        ('{"name": "  padded  "}', "name"),
        ('{"name": "x", "scopes": ["root"]}', "scopes.0"),
    ],
)
def test_out_of_bounds_key_fields_are_400s_naming_the_field_and_nothing_is_stored(gateway, content, field):
    before = key_ids(gateway)
    assert_refused(post_key(gateway, content), field)
    assert key_ids(gateway) == before


def test_an_expiry_in_the_past_is_refused_on_create_and_on_update(gateway):
    before = key_ids(gateway)
    assert_refused(post_key(gateway, f'{{"name": "late", "expires_at": {time.time() - 60}}}'), "expires_at")
    assert key_ids(gateway) == before
    made = post_key(gateway, f'{{"name": "soon", "expires_at": {time.time() + 3600}, "tpm": 1000000000}}')
    assert made.status_code == 201, made.text
    url = f"{gateway.url}/admin/keys/{made.json()['id']}"
    assert_refused(httpx.patch(url, json={"expires_at": time.time() - 60}, headers=ADMIN), "expires_at")
    assert_refused(httpx.patch(url, json={"name": None}, headers=ADMIN), "name")  # a name cannot be removed
    assert_refused(httpx.patch(url, json={"scopes": None}, headers=ADMIN), "scopes")
    shown = httpx.get(url, headers=ADMIN).json()
    assert shown["name"] == "soon" and shown["expires_at"] == made.json()["expires_at"]
    assert shown["scopes"] == ["inference"] and shown["tpm"] == 1_000_000_000


def test_route_bounds_are_400s_and_nothing_is_stored(gateway):
    url = f"{gateway.url}/admin/routes/bounded"
    good = {"variants": [{"model": "smollm2:135m", "weight": 100}]}
    for body, field in [
        ({**good, "guard": {"min_requests": 10**30}}, "guard.min_requests"),
        ({**good, "guard": {"max_ttft_p95_ratio": 1e308}}, "guard.max_ttft_p95_ratio"),
        ({**good, "guard": {"steps": [10, 101]}}, "guard.steps.1"),
        ({**good, "shadow": {"model": "llama3.2:1b", "percent": 100.5}}, "shadow.percent"),
        ({"variants": [{"model": "smollm2:135m", "weight": 100, "adapter": "-bad"}]}, "variants.0.adapter"),
        ({**good, "fallbacks": ["has space"]}, "fallbacks.0"),
        # found by the long fuzz: an integer past 64 bits in params could not be written (500)
        (
            {"variants": [{"model": "smollm2:135m", "weight": 100, "params": {"x": {"y": -(10**19)}}}]},
            "variants.0.params",
        ),
    ]:
        assert_refused(httpx.put(url, json=body, headers=ADMIN), field)
    assert httpx.get(url, headers=ADMIN).status_code == 404


def test_the_schema_says_the_deployments_output_cap_and_the_gateway_refuses_above_it(gateway, schema):
    chat = schema["components"]["schemas"]["ChatCompletionRequest"]["properties"]["max_tokens"]
    assert {"type": "integer", "minimum": 1, "maximum": MAX_OUTPUT_TOKENS}.items() <= chat["anyOf"][0].items()
    body = {"model": "smollm2:135m", "messages": [{"role": "user", "content": "hi"}]}
    url = f"{gateway.url}/v1/chat/completions"
    assert httpx.post(url, json={**body, "max_tokens": MAX_OUTPUT_TOKENS}, headers=ADMIN).status_code == 200
    assert_refused(httpx.post(url, json={**body, "max_tokens": MAX_OUTPUT_TOKENS + 1}, headers=ADMIN), "max_tokens")
    assert_refused(httpx.post(url, json={**body, "messages": [{"role": "user"}]}, headers=ADMIN), "messages.0")


def test_every_operation_documents_its_errors_with_the_one_error_model(schema):
    error_ref = "#/components/schemas/ErrorResponse"
    assert schema["components"]["schemas"]["ErrorResponse"]["required"] == ["error"]
    operations = [(path, method, op) for path, ops in schema["paths"].items() for method, op in ops.items()]
    assert len(operations) >= 30
    for path, method, op in operations:
        responses = op["responses"]
        assert "422" not in responses, (method, path)  # validation errors are 400s
        if op.get("requestBody") or op.get("parameters"):
            assert "400" in responses, (method, path)
        if path not in ("/healthz", "/readyz"):
            assert "401" in responses, (method, path)
        for status, response in responses.items():
            if status.startswith(("4", "5")) and path != "/readyz":
                assert response["content"]["application/json"]["schema"]["$ref"] == error_ref, (method, path, status)


def test_the_self_parsed_bodies_are_in_the_schema_with_their_bounds(schema):
    for path, model in [
        ("/v1/chat/completions", "ChatCompletionRequest"),
        ("/v1/completions", "CompletionRequest"),
        ("/v1/embeddings", "EmbeddingRequest"),
        ("/v1/feedback", "FeedbackRequest"),
    ]:
        body = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{model}"}
    chat = schema["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert chat["messages"]["minItems"] == 1 and chat["messages"]["maxItems"] == 4096
    assert "client_secret" in schema["components"]["schemas"]["TokenRequest"]["properties"]


def test_links_lead_from_the_operations_that_make_an_identifier(schema):
    created = schema["paths"]["/admin/keys"]["post"]["responses"]["201"]["links"]
    assert {link["operationId"] for link in created.values()} == {"show_key", "update_key", "revoke_key"}
    assert all(link["parameters"] == {"key_id": "$response.body#/id"} for link in created.values())
    route = schema["paths"]["/admin/routes/{name}"]["put"]["responses"]["200"]["links"]
    assert {"show_route", "promote_route", "roll_back_route", "delete_route"} <= {
        link["operationId"] for link in route.values()
    }
    adapter = schema["paths"]["/admin/adapters/{name}"]["put"]["responses"]["200"]["links"]
    assert {link["operationId"] for link in adapter.values()} == {"show_adapter", "delete_adapter"}
    ids = {op["operationId"] for ops in schema["paths"].values() for op in ops.values()}
    linked = [link for op in (created, route, adapter) for link in op.values()]
    assert all(link["operationId"] in ids for link in linked)
