"""The gateway on every Redis transport redis-py speaks: `redis://`, `rediss://` (a real redis-server with a
TLS port and a CA made for the test) and `unix://`. Each carries keys, shared limits and the cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testkit.ollama import start_ollama_double
from testkit.processes import Service, find_binary, free_port, wait_until
from tests.support.policy_stack import ADMIN_KEY, chat_body, gateway_env, start_gateway
from tests.support.tls import make_test_ca

ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}


def redis_server(argv_tail: list[str], port: int) -> Service:
    argv = [find_binary("redis-server"), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *argv_tail]
    return Service(name="redis", argv=argv, port=port)


def _tls_redis(tmp: Path) -> tuple[Service, str]:
    ca = make_test_ca(tmp)
    port = free_port()
    server = (
        redis_server(
            [
                "--port",
                "0",
                "--tls-port",
                str(port),
                "--tls-cert-file",
                str(ca.cert_file),
                "--tls-key-file",
                str(ca.key_file),
                "--tls-ca-cert-file",
                str(ca.ca_file),
                "--tls-auth-clients",
                "no",
            ],
            port,
        )
        .start()
        .wait_port()
    )
    return server, f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca.ca_file}"


def _unix_redis(tmp: Path) -> tuple[Service, str]:
    socket = tmp / "redis.sock"
    port = free_port()  # the TCP port only tells the test when the server is up
    server = (
        redis_server(["--port", str(port), "--unixsocket", str(socket), "--unixsocketperm", "700"], port)
        .start()
        .wait_port()
    )
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
