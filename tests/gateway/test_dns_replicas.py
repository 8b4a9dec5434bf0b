"""Replicas behind one DNS name: a real dnsmasq answers for `models.test` with several loopback addresses,
an Ollama double listens on each (same port), and the gateway (a real process, `discover: dns`) follows the
name as its addresses change: each address a replica of its own, a new one serving once it listed its
models, one that left getting no new request while its streams finish."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from testkit.dns import DnsServer, running_dns
from testkit.ollama import OllamaDoubleControl, running_ollama_replicas
from testkit.processes import Service, free_port, wait_until
from tests.support.gateway import ADMIN_KEY, running_gateway

MODEL = "smollm2:135m"
ONLY_ON_SOME = "llama3.2:1b"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
ADDRESSES = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]


@pytest.fixture(scope="module")
def port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def doubles(port: int) -> Iterator[dict[str, Service]]:
    """One double per address, all on one port; the third lacks ONLY_ON_SOME (replicas may differ)."""

    def models_of(address: str) -> list[str]:
        return [MODEL] if address == ADDRESSES[2] else [MODEL, ONLY_ON_SOME]

    with running_ollama_replicas(ADDRESSES, port, models_of, tokens=4) as started:
        yield started


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    with running_dns() as server:
        yield server


@pytest.fixture(scope="module")
def gateway(dns: DnsServer, doubles: dict[str, Service], port: int) -> Iterator[Service]:
    dns.set("models.test", ADDRESSES[:2])
    backend = {"kind": "ollama", "url": f"http://models.test:{port}", "name": "ollama", "discover": "dns"}
    env = {"GATEWAY_DNS_SERVERS": json.dumps([dns.server]), "GATEWAY_DNS_INTERVAL_S": "0.5"}
    with running_gateway([backend], env=env) as service:
        yield service


@pytest.fixture(autouse=True)
def fresh_doubles(doubles: dict[str, Service]) -> None:
    for service in doubles.values():
        OllamaDoubleControl(service.url).reset()


def replicas(gateway: Service) -> dict[str, Any]:
    return httpx.get(f"{gateway.url}/admin/health", headers=AUTH, timeout=10).json()["backends"]


def chats(doubles: dict[str, Service]) -> dict[str, int]:
    return {a: OllamaDoubleControl(s.url).calls("/api/chat") for a, s in doubles.items()}


def chat(gateway: Service, model: str = MODEL, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=AUTH, timeout=30)


def follow(dns: DnsServer, gateway: Service, addresses: list[str]) -> None:
    """Point the name at `addresses` and wait until the gateway has exactly their replicas, each up."""
    dns.set("models.test", addresses)
    wanted = {f"ollama@{a}" for a in addresses}
    wait_until(
        lambda: {n for n, r in replicas(gateway).items() if r["up"]} == wanted == set(replicas(gateway)),
        timeout=10,
        what=f"the gateway's replicas to be {sorted(wanted)}",
    )


def test_each_address_is_a_replica_and_requests_spread_over_them(dns, gateway, doubles) -> None:
    follow(dns, gateway, ADDRESSES[:2])
    assert all(chat(gateway).status_code == 200 for _ in range(20))
    calls = chats(doubles)
    assert calls[ADDRESSES[0]] >= 5 and calls[ADDRESSES[1]] >= 5 and calls[ADDRESSES[2]] == 0, calls
    metrics = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    assert f'gateway_backend_up{{backend="ollama@{ADDRESSES[0]}"}} 1.0' in metrics


def test_an_address_that_appears_serves_once_it_listed_its_models(dns, gateway, doubles) -> None:
    follow(dns, gateway, ADDRESSES)
    assert all(chat(gateway).status_code == 200 for _ in range(30))
    assert chats(doubles)[ADDRESSES[2]] >= 5
    # the newcomer lacks ONLY_ON_SOME: those requests never reach it
    assert all(chat(gateway, ONLY_ON_SOME).status_code == 200 for _ in range(20))
    bodies = OllamaDoubleControl(doubles[ADDRESSES[2]].url).stats()["bodies"].get("/api/chat", [])
    assert all(b["model"] == MODEL for b in bodies)


def test_an_address_that_leaves_gets_no_new_request_and_its_streams_finish(dns, gateway, doubles) -> None:
    follow(dns, gateway, ADDRESSES)
    leaving = ADDRESSES[1]
    OllamaDoubleControl(doubles[leaving].url).set(token_delay=0.3, tokens=10)  # ~3 s per answer there
    finished: list[str] = []

    def stream() -> None:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
        with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body, headers=AUTH, timeout=30) as r:
            finished.append([line for line in r.iter_lines() if line][-1])

    threads = [threading.Thread(target=stream) for _ in range(6)]
    for t in threads:
        t.start()
    wait_until(
        lambda: OllamaDoubleControl(doubles[leaving].url).stats()["inflight"] >= 1,
        timeout=10,
        what="a stream running on the leaving replica",
    )
    follow(dns, gateway, [a for a in ADDRESSES if a != leaving])
    before = chats(doubles)[leaving]
    assert all(chat(gateway).status_code == 200 for _ in range(20))
    assert chats(doubles)[leaving] == before, "a request reached the replica after it left"
    for t in threads:
        t.join(30)
    assert finished == ["data: [DONE]"] * 6
    assert OllamaDoubleControl(doubles[leaving].url).stats()["streams"]["aborted"] == 0


def test_a_name_with_no_address_leaves_no_replica_and_says_so(dns, gateway) -> None:
    dns.set("models.test", [])
    wait_until(lambda: replicas(gateway) == {}, timeout=10, what="every replica gone")
    answer = chat(gateway)
    assert answer.status_code in (404, 503), answer.text
    follow(dns, gateway, ADDRESSES[:1])
    started = time.monotonic()
    wait_until(lambda: chat(gateway).status_code == 200, timeout=10, what="serving again")
    assert time.monotonic() - started < 10
