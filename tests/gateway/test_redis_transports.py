"""The gateway on every Redis transport redis-py speaks: `redis://`, `rediss://` (a real redis-server with a
TLS port and a CA made for the test) and `unix://`. Each carries keys, shared limits and the cache."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.ollama import start_ollama_double
from tests.support.policy_stack import ADMIN_KEY, chat_body, gateway_env, start_gateway
from tests.support.processes import Service, find_binary, free_port, wait_until

ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_pem(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    path.with_suffix(".key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_test_ca(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca.crt, server.crt, server.key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("slm-stack test CA")).issuer_name(_name("slm-stack test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write_pem(folder / "ca", ca_key, ca)
    _write_pem(folder / "server", key, cert)
    return folder / "ca.crt", folder / "server.crt", folder / "server.key"


def redis_server(argv_tail: list[str], port: int) -> Service:
    argv = [find_binary("redis-server"), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *argv_tail]
    return Service(name="redis", argv=argv, port=port)


def _tls_redis(tmp: Path) -> tuple[Service, str]:
    ca, cert, key = make_test_ca(tmp)
    port = free_port()
    server = redis_server(["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
                           "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"],
                          port).start().wait_port()
    return server, f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}"


def _unix_redis(tmp: Path) -> tuple[Service, str]:
    socket = tmp / "redis.sock"
    port = free_port()  # the TCP port only tells the test when the server is up
    server = redis_server(["--port", str(port), "--unixsocket", str(socket), "--unixsocketperm", "700"],
                          port).start().wait_port()
    wait_until(socket.exists, timeout=5, what="redis unix socket")
    return server, f"unix://{socket}?db=0"


def _tcp_redis(_: Path) -> tuple[Service, str]:
    port = free_port()
    return redis_server(["--port", str(port)], port).start().wait_port(), f"redis://127.0.0.1:{port}/0"


@pytest.fixture(params=["redis", "rediss", "unix"])
def gateway_on(request, tmp_path) -> Iterator[Service]:
    start = {"redis": _tcp_redis, "rediss": _tls_redis, "unix": _unix_redis}[request.param]
    redis, url = start(tmp_path)
    double = start_ollama_double(tokens=4)
    gateway = None
    try:
        gateway = start_gateway(gateway_env(redis_port=None, backend_url=double.url, REDIS_URL=url))
        yield gateway
    finally:
        for service in (gateway, double, redis):
            if service is not None:
                service.stop()


def test_keys_limits_and_cache_work_over_the_transport(gateway_on: Service) -> None:
    url = gateway_on.url
    assert httpx.get(f"{url}/readyz").json()["status"] == "ready"
    created = httpx.post(f"{url}/admin/keys", json={"name": "transport", "rpm": 3}, headers=ADMIN_HEADERS)
    assert created.status_code == 201, created.text
    headers = {"X-API-Key": created.json()["key"]}
    body = chat_body(temperature=0, content="over this transport")
    first = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=10)
    assert first.status_code == 200 and first.headers["X-Cache"] == "MISS"
    assert first.headers["X-RateLimit-Remaining"] == "2"  # counted by the script in Redis
    second = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=10)
    assert second.headers["X-Cache"] == "HIT" and second.headers["X-RateLimit-Remaining"] == "1"
    httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=10)
    refused = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=10)
    assert refused.status_code == 429
    metrics = httpx.get(f"{url}/metrics").text
    errors = [line for line in metrics.splitlines() if line.startswith("gateway_redis_errors_total{")]
    assert errors and all(line.endswith(" 0.0") for line in errors), errors
