"""No open door: without an admin key the gateway makes one for the run and prints it once; open access
needs GATEWAY_AUTH=none, which is refused off loopback and answers loopback callers only."""

from __future__ import annotations

import re
import subprocess
import sys

import httpx
import pytest

from testkit.processes import REPO_ROOT, Service, free_port, python_service

BASE_ENV = {"GATEWAY_HOST": "127.0.0.1", "GATEWAY_BACKENDS": "[]", "GATEWAY_LOG_LEVEL": "warning"}


def start(env: dict[str, str]) -> Service:
    port = free_port()
    return python_service(
        "gateway-door", ["-m", "gateway"], port, {**BASE_ENV, "GATEWAY_PORT": str(port), **env}
    ).start_and_wait_http("/healthz")


@pytest.fixture(scope="module")
def keyless() -> Service:
    service = start({})
    yield service
    service.stop()


def test_without_an_admin_key_the_gateway_prints_one_for_this_run_once(keyless: Service) -> None:
    keys = re.findall(r"sk-[A-Za-z0-9_-]{40,}", keyless.logs())
    assert len(keys) == 1, keyless.logs()
    json_lines = [line for line in keyless.logs().splitlines() if line.startswith("{")]
    assert json_lines and not any(keys[0] in line for line in json_lines)  # shown on stderr, never logged
    made = httpx.post(
        f"{keyless.url}/admin/keys", json={"name": "first"}, headers={"Authorization": f"Bearer {keys[0]}"}, timeout=10
    )
    assert made.status_code == 201 and made.json()["key"].startswith("sk-")


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer sk-not-a-key-0123456789abcdef"}, {"X-Forwarded-For": "203.0.113.9"}]
)
def test_without_an_admin_key_nobody_gets_in_without_one(keyless: Service, headers: dict[str, str]) -> None:
    for method, path in (("GET", "/admin/keys"), ("POST", "/v1/chat/completions"), ("GET", "/v1/models")):
        answer = httpx.request(method, f"{keyless.url}{path}", headers=headers, json={}, timeout=10)
        assert answer.status_code == 401, (path, answer.text)
        assert answer.json()["error"]["type"] == "authentication_error"


def test_open_access_is_refused_on_an_address_other_machines_reach() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**BASE_ENV, "GATEWAY_AUTH": "none", "GATEWAY_HOST": "0.0.0.0", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2 and "GATEWAY_AUTH=none" in done.stderr and "Traceback" not in done.stderr


def test_open_access_answers_loopback_callers_only() -> None:
    service = start({"GATEWAY_AUTH": "none"})
    try:
        assert "sk-" not in service.logs()  # no key is made: there is nothing to present
        local = httpx.post(f"{service.url}/admin/keys", json={"name": "local"}, timeout=10)
        assert local.status_code == 201
        # What another machine's request looks like through a proxy on this host (uvicorn trusts
        # X-Forwarded-For from loopback): refused, admin and inference alike.
        for path in ("/admin/keys", "/v1/models"):
            remote = httpx.get(f"{service.url}{path}", headers={"X-Forwarded-For": "203.0.113.9"}, timeout=10)
            assert remote.status_code == 403 and "loopback" in remote.json()["error"]["message"]
    finally:
        service.stop()
