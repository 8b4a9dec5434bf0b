"""JWT verification with tokens forged in the test: every bad token is refused, good ones pass."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jose import jwk, jwt

from gateway.access.jwt import JwksCache, JwtConfig, JwtVerifier, TokenInvalid, mint_token

SECRET = "unit-test-hs256-secret-0123456789abcdef"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict, claims: dict, sign=lambda msg: b"") -> str:
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    return head + "." + b64(sign(head.encode()))


def claims(**extra) -> dict:
    now = int(time.time())
    return {"sub": "key_1", "iat": now, "exp": now + 300, **extra}


def hs_verifier(**cfg) -> JwtVerifier:
    return JwtVerifier(JwtConfig(secret=SECRET, **cfg))


async def test_minted_token_round_trips_with_scopes_and_models():
    cfg = JwtConfig(secret=SECRET, issuer="slm-gateway", audience="slm-api", ttl_s=60)
    token, ttl = mint_token(cfg, subject="key_1", key_id="key_1", scopes=frozenset({"inference"}), models=("m",))
    got = await JwtVerifier(cfg).verify(token)
    assert ttl == 60 and got["sub"] == "key_1" and got["scope"] == "inference" and got["models"] == ["m"]
    assert got["exp"] - got["iat"] == 60


@pytest.mark.parametrize(
    "case",
    [
        "malformed",
        "alg_none",
        "bad_signature",
        "expired",
        "not_yet_valid",
        "missing_exp",
        "future_iat",
        "oversized",
        "unlisted_alg",
        "no_subject",
    ],
)
async def test_bad_hs_tokens_are_refused(case):
    now = int(time.time())
    sign = lambda msg: hmac.new(SECRET.encode(), msg, hashlib.sha256).digest()
    hs = {"alg": "HS256", "typ": "JWT"}
    token = {
        "malformed": "not.a.jwt",
        "alg_none": forge({"alg": "none", "typ": "JWT"}, claims()),
        "bad_signature": forge(hs, claims(), lambda m: sign(m + b"x")),
        "expired": forge(hs, claims(iat=now - 600, exp=now - 300), sign),
        "not_yet_valid": forge(hs, claims(nbf=now + 600), sign),
        "missing_exp": forge(hs, {"sub": "key_1", "iat": now}, sign),
        "future_iat": forge(hs, claims(iat=now + 600, exp=now + 900), sign),
        "oversized": forge(hs, claims(pad="x" * 9000), sign),
        "unlisted_alg": jwt.encode(claims(), SECRET, algorithm="HS512"),
        "no_subject": forge(hs, {"iat": now, "exp": now + 60}, sign),
    }[case]
    with pytest.raises(TokenInvalid):
        await hs_verifier().verify(token)


async def test_leeway_accepts_slightly_expired_token():
    now = int(time.time())
    token = jwt.encode(claims(iat=now - 100, exp=now - 5), SECRET, algorithm="HS256")
    assert (await hs_verifier(leeway_s=30).verify(token))["sub"] == "key_1"
    with pytest.raises(TokenInvalid, match="expired"):
        await hs_verifier(leeway_s=0).verify(token)


@pytest.mark.parametrize("field,value", [("iss", "someone-else"), ("aud", "other-api")])
async def test_wrong_issuer_or_audience_is_refused(field, value):
    good = {"iss": "slm-gateway", "aud": "slm-api"}
    verifier = hs_verifier(issuer="slm-gateway", audience="slm-api")
    assert await verifier.verify(jwt.encode(claims(**good), SECRET, algorithm="HS256"))
    with pytest.raises(TokenInvalid):
        await verifier.verify(jwt.encode(claims(**{**good, field: value}), SECRET, algorithm="HS256"))
    missing = {k: v for k, v in good.items() if k != field}
    with pytest.raises(TokenInvalid):
        await verifier.verify(jwt.encode(claims(**missing), SECRET, algorithm="HS256"))


async def test_rs256_public_key_and_key_confusion_attack(rsa_keys):
    private_pem, public_pem = rsa_keys
    verifier = JwtVerifier(JwtConfig(algorithms=("RS256",), public_key=public_pem))
    assert (await verifier.verify(jwt.encode(claims(), private_pem, algorithm="RS256")))["sub"] == "key_1"
    # The attacker HMAC-signs with the (public) PEM and says HS256: refused by the pinned list.
    confused = forge(
        {"alg": "HS256", "typ": "JWT"}, claims(), lambda m: hmac.new(public_pem.encode(), m, hashlib.sha256).digest()
    )
    with pytest.raises(TokenInvalid, match="algorithm"):
        await verifier.verify(confused)
    # Even with HS256 also allowed, HS tokens verify only against the secret, never the PEM.
    mixed = JwtVerifier(JwtConfig(algorithms=("RS256", "HS256"), public_key=public_pem, secret=SECRET))
    with pytest.raises(TokenInvalid):
        await mixed.verify(confused)


def test_config_refuses_unusable_settings():
    with pytest.raises(ValueError, match="unsupported"):
        JwtConfig(algorithms=("none",), secret=SECRET)
    with pytest.raises(ValueError, match="SECRET"):
        JwtConfig(algorithms=("HS256",))
    with pytest.raises(ValueError, match="PUBLIC_KEY"):
        JwtConfig(algorithms=("RS256",))


@pytest.fixture
def jwks_server():
    """A real HTTP server publishing an EC public key as a JWKS, like an identity provider."""
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = jwk.construct(pem, "ES256").public_key().to_dict()
    body = json.dumps({"keys": [{**public, "kid": "idp-1", "alg": "ES256", "use": "sig"}]}).encode()
    hits = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/.well-known/jwks.json", pem, hits
    server.shutdown()
    server.server_close()


async def test_es256_via_jwks_url(jwks_server):
    url, pem, hits = jwks_server
    jwks = JwksCache(url)
    try:
        verifier = JwtVerifier(JwtConfig(algorithms=("ES256",), jwks_url=url, issuer="https://idp.example"), jwks)
        token = jwt.encode(claims(iss="https://idp.example"), pem, algorithm="ES256", headers={"kid": "idp-1"})
        assert (await verifier.verify(token))["sub"] == "key_1"
        assert (await verifier.verify(token))["sub"] == "key_1"
        assert len(hits) == 1  # cached after the first fetch
        other = (
            ec.generate_private_key(ec.SECP256R1())
            .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            .decode()
        )
        with pytest.raises(TokenInvalid):
            await verifier.verify(
                jwt.encode(claims(iss="https://idp.example"), other, algorithm="ES256", headers={"kid": "idp-1"})
            )
        with pytest.raises(TokenInvalid, match="does not publish"):
            await verifier.verify(
                jwt.encode(claims(iss="https://idp.example"), pem, algorithm="ES256", headers={"kid": "unknown"})
            )
    finally:
        await jwks.aclose()


def test_settings_refuse_unusable_jwt_configuration_without_echoing_secrets():
    from pydantic import ValidationError

    from gateway.settings import Settings

    with pytest.raises(ValidationError) as refused:
        Settings(jwt_algorithms=["RS256"], jwt_secret="a-secret-that-must-not-be-echoed")
    assert "GATEWAY_JWT_PUBLIC_KEY" in str(refused.value)
    assert "a-secret-that-must-not-be-echoed" not in str(refused.value)
    with pytest.raises(ValidationError, match="GATEWAY_JWT_ALGORITHMS: unsupported"):
        Settings(jwt_algorithms=["none"], jwt_secret=SECRET)
    assert Settings(jwt_secret=None).jwt_algorithms == ["HS256"]  # development: API keys only
