"""Authentication through a real gateway process: every failure is a 401 with OpenAI's error shape
and WWW-Authenticate (tokens forged here), a valid identity without scope or model gets a 403."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import httpx
import pytest
from jose import jwt

from tests.support.policy_stack import ADMIN_KEY, JWT_SECRET, MODEL, PolicyStack, chat_body

ISSUER, AUDIENCE = "slm-gateway", "slm-api"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict, claims: dict, sign=lambda msg: b"") -> str:
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    return head + "." + b64(sign(head.encode()))


def hs_sign(msg: bytes, secret: str = JWT_SECRET) -> bytes:
    return hmac.new(secret.encode(), msg, hashlib.sha256).digest()


@pytest.fixture(scope="module")
def stack(rsa_keys):
    s = PolicyStack.start(
        GATEWAY_JWT_ALGORITHMS='["HS256", "RS256"]',
        GATEWAY_JWT_PUBLIC_KEY=rsa_keys[1],
        GATEWAY_JWT_ISSUER=ISSUER,
        GATEWAY_JWT_AUDIENCE=AUDIENCE,
    )
    yield s
    s.stop()


def claims(**extra) -> dict:
    now = int(time.time())
    return {
        "sub": "partner-42",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 300,
        "scope": "inference",
        **extra,
    }


def chat(stack, headers: dict[str, str], **body) -> httpx.Response:
    return httpx.post(f"{stack.url}/v1/chat/completions", json=chat_body(**body), headers=headers, timeout=10)


def assert_401(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    error = response.json()["error"]
    assert error["type"] == "authentication_error" and error["message"]


def test_valid_key_in_either_header(stack):
    key = stack.create_key()
    assert chat(stack, {"Authorization": f"Bearer {key}"}).status_code == 200
    assert chat(stack, {"X-API-Key": key}).status_code == 200


def test_bad_credentials_are_401(stack, rsa_keys):
    now = int(time.time())
    hs = {"alg": "HS256", "typ": "JWT"}
    public_pem = rsa_keys[1]
    cases = {
        "missing header": {},
        "wrong scheme": {"Authorization": "Basic dXNlcjpwYXNz"},
        "unknown key": {"Authorization": "Bearer sk-" + "A" * 43},
        "malformed token": {"Authorization": "Bearer eyJhbGciOi.not-base64!.x"},
        "alg none": {"Authorization": "Bearer " + forge({"alg": "none", "typ": "JWT"}, claims())},
        "HS/RS key confusion": {"Authorization": "Bearer " + forge(hs, claims(), lambda m: hs_sign(m, public_pem))},
        "bad signature": {"Authorization": "Bearer " + forge(hs, claims(), lambda m: hs_sign(m, "not-the-secret"))},
        "expired": {"Authorization": "Bearer " + forge(hs, claims(iat=now - 900, exp=now - 600), hs_sign)},
        "not yet valid": {"Authorization": "Bearer " + forge(hs, claims(nbf=now + 600), hs_sign)},
        "wrong issuer": {"Authorization": "Bearer " + forge(hs, claims(iss="evil"), hs_sign)},
        "wrong audience": {"Authorization": "Bearer " + forge(hs, claims(aud="other"), hs_sign)},
        "no exp": {"Authorization": "Bearer " + forge(hs, {k: v for k, v in claims().items() if k != "exp"}, hs_sign)},
        "oversized header": {"Authorization": "Bearer " + "x" * 9000},
    }
    for name, headers in cases.items():
        response = chat(stack, headers)
        assert_401(response)
        assert response.headers.get("X-Request-ID"), name


def test_rs256_and_hs256_tokens_from_an_identity_provider(stack, rsa_keys):
    rs = jwt.encode(claims(), rsa_keys[0], algorithm="RS256")
    hs = jwt.encode(claims(), JWT_SECRET, algorithm="HS256")
    assert chat(stack, {"Authorization": f"Bearer {rs}"}).status_code == 200
    assert chat(stack, {"Authorization": f"Bearer {hs}"}).status_code == 200


def test_revoked_key_is_401(stack):
    key = stack.create_key(name="to-revoke")
    assert chat(stack, {"X-API-Key": key}).status_code == 200
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    listed = httpx.get(f"{stack.url}/admin/keys", headers=admin).json()["data"]
    key_id = next(k["id"] for k in listed if k["name"] == "to-revoke")
    assert httpx.delete(f"{stack.url}/admin/keys/{key_id}", headers=admin).json()["revoked"] is True
    response = chat(stack, {"X-API-Key": key})
    assert_401(response)
    assert "revoked" in response.json()["error"]["message"]


def test_expired_key_is_401(stack):
    expires_at = time.time() + 1.0  # the API takes only an expiry in the future
    key = stack.create_key(name="short-lived", expires_at=expires_at)
    time.sleep(max(0.0, expires_at - time.time()) + 0.1)
    assert_401(chat(stack, {"X-API-Key": key}))


def test_scope_and_model_allow_list_are_403(stack):
    admin_only = stack.create_key(scopes=["admin"])
    response = chat(stack, {"X-API-Key": admin_only})
    assert response.status_code == 403 and response.json()["error"]["type"] == "permission_error"
    other_model_only = stack.create_key(models=["llama3.2:1b"])
    response = chat(stack, {"X-API-Key": other_model_only})
    assert response.status_code == 403 and response.json()["error"]["param"] == "model"
    assert chat(stack, {"X-API-Key": other_model_only}, model="llama3.2:1b").status_code == 200
    listed = httpx.get(f"{stack.url}/v1/models", headers={"X-API-Key": other_model_only}).json()["data"]
    assert [m["id"] for m in listed] == ["llama3.2:1b"]
    inference_only = stack.create_key()
    assert httpx.get(f"{stack.url}/admin/keys", headers={"X-API-Key": inference_only}).status_code == 403
    assert_401(httpx.get(f"{stack.url}/admin/keys"))


def test_token_exchange_carries_scopes_and_models(stack):
    key = stack.create_key(models=[MODEL])
    response = httpx.post(f"{stack.url}/auth/token", data={"grant_type": "client_credentials", "client_secret": key})
    assert response.status_code == 200, response.text
    token = response.json()
    assert token["token_type"] == "Bearer" and 0 < token["expires_in"] <= 900 and token["scope"] == "inference"
    claims_ = jwt.get_unverified_claims(token["access_token"])
    assert claims_["models"] == [MODEL] and claims_["iss"] == ISSUER and claims_["aud"] == AUDIENCE
    bearer = {"Authorization": f"Bearer {token['access_token']}"}
    assert chat(stack, bearer).status_code == 200
    assert chat(stack, bearer, model="llama3.2:1b").status_code == 403
    assert httpx.post(f"{stack.url}/auth/token", headers={"X-API-Key": key}).status_code == 200
    assert_401(httpx.post(f"{stack.url}/auth/token", headers={"X-API-Key": "sk-" + "B" * 43}))
    bad_grant = httpx.post(f"{stack.url}/auth/token", data={"grant_type": "password", "client_secret": key})
    assert bad_grant.status_code == 400 and bad_grant.json()["error"]["code"] == "unsupported_grant_type"


def test_admin_api_never_shows_secrets_and_validates_input(stack):
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    created = httpx.post(f"{stack.url}/admin/keys", json={"name": "listed", "rpm": 7}, headers=admin).json()
    secret = created.pop("key")
    listing = httpx.get(f"{stack.url}/admin/keys", headers=admin).text
    assert secret not in listing and "secret_hash" not in listing and created["id"] in listing
    shown = httpx.get(f"{stack.url}/admin/keys/{created['id']}", headers=admin).json()
    assert shown["rpm"] == 7 and "key" not in shown
    patched = httpx.patch(f"{stack.url}/admin/keys/{created['id']}", json={"rpm": 9, "tpm": 500}, headers=admin)
    assert patched.json()["rpm"] == 9 and patched.json()["tpm"] == 500
    assert (
        httpx.post(f"{stack.url}/admin/keys", json={"name": "x", "scopes": ["root"]}, headers=admin).status_code == 400
    )
    assert httpx.post(f"{stack.url}/admin/keys", json={"name": "x", "rpm": 0}, headers=admin).status_code == 400
    assert httpx.get(f"{stack.url}/admin/keys/key_nope", headers=admin).status_code == 404
