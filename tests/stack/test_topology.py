"""The shipped nginx config in front of two real gateways, Redis and the Ollama double.

Each test calls the edge from its own loopback source address, so the per-IP limits of one
test never spend another's budget. Which replica served a request is read from nginx's own
JSON access log (upstream_addr), by request id.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from testkit.ollama import OllamaDoubleControl
from testkit.processes import wait_until
from testkit.topology import MODEL, Topology, compose_nginx_environment, running_topology

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say something."}]}
EDGE = compose_nginx_environment()


def nginx_size(value: str) -> int:
    """nginx's size syntax (`2m`, `512k`, `1048576`) in bytes."""
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", value)
    assert match, f"not an nginx size: {value!r}"
    return int(match.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match.group(2).lower()]


def nginx_rate(value: str) -> float:
    """`20r/s` or `600r/m` in requests per second."""
    match = re.fullmatch(r"(\d+)r/([sm])", value)
    assert match, f"not an nginx rate: {value!r}"
    return int(match.group(1)) / (1 if match.group(2) == "s" else 60)


def entries_by_id(topo: Topology, ids: set[str]) -> dict[str, dict]:
    return {e["request_id"]: e for e in topo.edge_log() if e["request_id"] in ids}


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    with running_topology(tmp_path_factory.mktemp("topology"), tokens=8) as topology:
        yield topology


@pytest.fixture
def control(topo: Topology) -> Iterator[OllamaDoubleControl]:
    ctl = OllamaDoubleControl(topo.double.url)
    ctl.reset()
    yield ctl
    ctl.reset()


def test_requests_spread_over_both_replicas(topo: Topology) -> None:
    ids = {uuid.uuid4().hex for _ in range(20)}
    with topo.client("127.0.0.11") as client:
        for rid in ids:
            response = client.post("/v1/chat/completions", json=CHAT, headers={"X-Request-ID": rid})
            assert response.status_code == 200, response.text
            assert response.json()["choices"][0]["message"]["content"]
    wait_until(lambda: len(entries_by_id(topo, ids)) == len(ids), timeout=5, what="access log lines")
    served = [e["upstream_addr"] for e in entries_by_id(topo, ids).values()]
    assert set(served) == topo.replica_addresses()
    for addr in topo.replica_addresses():
        assert served.count(addr) >= 5, f"least_conn sent only {served.count(addr)} of 20 to {addr}"


def test_request_id_security_headers_and_json_log(topo: Topology) -> None:
    with topo.client("127.0.0.12") as client:
        mine = client.get("/v1/models", headers={"X-Request-ID": "trace-abc.123"})
        generated = client.get("/v1/models")
    assert mine.status_code == 200, mine.text
    assert mine.headers.get_list("X-Request-ID") == ["trace-abc.123"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["X-Request-ID"])
    for name, value in {
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
    }.items():
        assert mine.headers[name] == value
    assert "Server" not in mine.headers or mine.headers["Server"] == "nginx"  # no version
    wait_until(lambda: "trace-abc.123" in entries_by_id(topo, {"trace-abc.123"}), timeout=5, what="log line")
    entry = entries_by_id(topo, {"trace-abc.123"})["trace-abc.123"]
    assert entry["status"] == 200 and entry["remote_addr"] == "127.0.0.12"
    assert entry["upstream_addr"] in topo.replica_addresses()
    assert float(entry["upstream_response_time"]) >= 0 and entry["request_time"] >= 0


def test_stream_passes_through_unbuffered(topo: Topology, control: OllamaDoubleControl) -> None:
    delay = 0.25
    control.set(token_delay=delay, tokens=8)
    arrivals: list[float] = []
    lines: list[str] = []
    with topo.client("127.0.0.13") as client:
        start = time.monotonic()
        with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("data: "):
                    arrivals.append(time.monotonic() - start)
                    lines.append(line)
    assert lines[-1] == "data: [DONE]"
    # Buffered, every chunk would arrive together at the end; passed through, the first one
    # is here while the double is still producing the remaining tokens, `delay` apart.
    assert len(arrivals) >= 8
    assert arrivals[0] < arrivals[-1] - 4 * delay, arrivals
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert sum(gap > delay / 2 for gap in gaps) >= 5, gaps


def test_gateway_metrics_are_not_public(topo: Topology) -> None:
    assert httpx.get(topo.gateways[0].url + "/metrics").status_code == 200  # there is something to hide
    with topo.client("127.0.0.14") as client:
        for path in ("/metrics", "/metrics/", "/metrics?x=1"):
            response = client.get(path)
            assert response.status_code == 404, path
            assert response.json()["error"]["code"] == "not_found"
            assert "gateway_requests_in_flight" not in response.text


def test_stub_status_only_on_the_internal_port(topo: Topology) -> None:
    internal = httpx.get(f"http://127.0.0.1:{topo.status_port}/stub_status")
    assert internal.status_code == 200 and internal.text.startswith("Active connections:")
    with topo.client("127.0.0.15") as client:
        public = client.get("/stub_status")
    assert "Active connections" not in public.text


def test_oversized_body_is_refused_at_the_edge(topo: Topology) -> None:
    cap = nginx_size(EDGE["NGINX_MAX_BODY"])
    padding = "x" * (cap + 1024)
    rid = uuid.uuid4().hex
    with topo.client("127.0.0.16") as client:
        response = client.post(
            "/v1/chat/completions",
            headers={"X-Request-ID": rid},
            json={**CHAT, "messages": [{"role": "user", "content": padding}]},
        )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "edge_body_too_large"
    wait_until(lambda: rid in entries_by_id(topo, {rid}), timeout=5, what="log line")
    assert entries_by_id(topo, {rid})[rid]["upstream_addr"] == ""  # no gateway saw it


def test_body_under_the_edge_cap_reaches_the_gateway(topo: Topology) -> None:
    # Between the gateway's own 1 MiB cap and the edge's: the gateway answers, precisely.
    padding = "x" * ((1 << 20) + 1024)
    assert len(padding) < nginx_size(EDGE["NGINX_MAX_BODY"])
    rid = uuid.uuid4().hex
    with topo.client("127.0.0.17") as client:
        response = client.post(
            "/v1/chat/completions",
            headers={"X-Request-ID": rid},
            json={**CHAT, "messages": [{"role": "user", "content": padding}]},
        )
    assert response.status_code == 413
    assert response.json()["error"]["code"] != "edge_body_too_large"
    wait_until(lambda: rid in entries_by_id(topo, {rid}), timeout=5, what="log line")
    assert entries_by_id(topo, {rid})[rid]["upstream_addr"] in topo.replica_addresses()


def test_over_rate_client_gets_the_edge_429(topo: Topology) -> None:
    burst, rate = int(EDGE["NGINX_REQ_BURST"]), nginx_rate(EDGE["NGINX_REQ_RATE"])
    statuses: list[int] = []
    limited: list[httpx.Response] = []
    with topo.client("127.0.0.18") as client:
        start = time.monotonic()
        for _ in range(burst + 30):
            response = client.get("/v1/models")
            statuses.append(response.status_code)
            if response.status_code == 429:
                limited.append(response)
        elapsed = time.monotonic() - start
    assert limited, f"no 429 after {len(statuses)} requests in {elapsed:.2f}s"
    assert set(statuses) <= {200, 429}
    assert statuses.count(200) <= burst + 1 + rate * elapsed + 1
    assert all(r.json()["error"]["code"] == "edge_rate_limited" for r in limited)
    assert all(r.headers.get("Retry-After") for r in limited)
    with topo.client("127.0.0.19") as other:  # the limit is per address
        assert other.get("/v1/models").status_code == 200


async def test_over_connection_limit_gets_the_edge_429(topo: Topology, control: OllamaDoubleControl) -> None:
    limit = int(EDGE["NGINX_CONN_PER_IP"])
    assert limit + 8 <= int(EDGE["NGINX_REQ_BURST"]) + 1, "the request limit would answer first"
    control.set(token_delay=0.3, tokens=6)
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.20", limits=httpx.Limits(max_connections=200))
    headers = {"Authorization": f"Bearer {topo.admin_key}"}

    async def one(client: httpx.AsyncClient) -> tuple[int, str]:
        async with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
            body = (await response.aread()).decode()
            return response.status_code, body

    async with httpx.AsyncClient(base_url=topo.url, transport=transport, headers=headers, timeout=30) as client:
        results = await asyncio.gather(*(one(client) for _ in range(limit + 8)))
    ok = [body for status, body in results if status == 200]
    refused = [body for status, body in results if status == 429]
    assert len(ok) + len(refused) == len(results)
    assert refused and len(ok) <= limit
    assert all("edge_rate_limited" in body for body in refused)
    assert all(body.rstrip().endswith("data: [DONE]") for body in ok)


def test_killing_a_gateway_loses_no_request(tmp_path: Path) -> None:
    with running_topology(tmp_path, tokens=10, token_delay=0.1) as topo:
        victim, survivor = topo.gateways
        ids = [uuid.uuid4().hex for _ in range(24)]

        def call(rid: str) -> httpx.Response:
            with topo.client("127.0.0.21") as client:
                return client.post("/v1/chat/completions", json=CHAT, headers={"X-Request-ID": rid})

        with ThreadPoolExecutor(max_workers=len(ids)) as pool:
            futures = [pool.submit(call, rid) for rid in ids]
            # Kill it while it holds requests (each takes ~1s at the double, and least_conn
            # splits them): those must be retried on the survivor.
            double = OllamaDoubleControl(topo.double.url)
            wait_until(lambda: double.calls("/api/chat") >= 16, timeout=10, what="requests in flight")
            victim.kill()
            responses = [f.result() for f in futures]
        after_ids = [uuid.uuid4().hex for _ in range(6)]
        after = [call(rid) for rid in after_ids]
        survivor.kill()
        none_left = call(uuid.uuid4().hex)

    # With no replica at all, the edge answers for itself, in the API's error shape.
    assert none_left.status_code == 503 and none_left.headers.get("Retry-After")
    assert none_left.json()["error"]["code"] == "edge_upstream_unavailable"

    for response in [*responses, *after]:
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"]
    log = entries_by_id(topo, set(ids))
    retried = [e for e in log.values() if "," in e["upstream_addr"]]
    assert retried, "no request was in flight on the killed replica"
    victim_addr, survivor_addr = f"127.0.0.1:{victim.port}", f"127.0.0.1:{survivor.port}"
    for entry in retried:
        assert entry["upstream_addr"].split(", ") == [victim_addr, survivor_addr]
        assert entry["status"] == 200
    # Passive health: with max_fails reached, nginx stops trying the dead replica at all.
    later = entries_by_id(topo, set(after_ids[-3:]))
    assert [later[rid]["upstream_addr"] for rid in after_ids[-3:]] == [survivor_addr] * 3
