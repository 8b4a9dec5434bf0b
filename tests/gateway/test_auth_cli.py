"""The operator CLI (`python -m gateway keys ... | token ...`) against the gateway's real Redis."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from testkit.processes import REPO_ROOT, free_port
from tests.support.policy_stack import JWT_SECRET, PEPPER, PolicyStack, chat_body


@pytest.fixture(scope="module")
def stack():
    s = PolicyStack.start(GATEWAY_KEY_CACHE_S="0")
    yield s
    s.stop()


def cli(redis_port: int, *args: str) -> subprocess.CompletedProcess:
    env = {
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "GATEWAY_KEY_PEPPER": PEPPER,
        "GATEWAY_JWT_SECRET": JWT_SECRET,
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_cli_key_lifecycle_is_honoured_by_the_gateway(stack):
    created = cli(
        stack.redis.port, "--json", "keys", "create", "--name", "from-cli", "--rpm", "50", "--models", "smollm2:135m"
    )
    assert created.returncode == 0, created.stderr
    record = json.loads(created.stdout)
    key, key_id = record["key"], record["id"]
    assert record["rpm"] == 50 and record["models"] == ["smollm2:135m"]
    call = lambda headers: httpx.post(f"{stack.url}/v1/chat/completions", json=chat_body(), headers=headers)
    assert call({"X-API-Key": key}).status_code == 200

    listed = cli(stack.redis.port, "keys", "list")
    assert listed.returncode == 0 and key_id in listed.stdout and key not in listed.stdout

    token = cli(stack.redis.port, "token", key_id)
    assert token.returncode == 0, token.stderr
    assert call({"Authorization": f"Bearer {token.stdout.strip()}"}).status_code == 200

    assert cli(stack.redis.port, "keys", "update", key_id, "--rpm", "7").returncode == 0
    assert call({"X-API-Key": key}).headers["X-RateLimit-Limit"] == "7"

    revoked = cli(stack.redis.port, "keys", "revoke", key_id)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    assert call({"X-API-Key": key}).status_code == 401
    assert call({"Authorization": f"Bearer {token.stdout.strip()}"}).status_code == 401  # token of a revoked key


@pytest.mark.parametrize(
    "args,message",
    [
        (("keys", "create", "--name", "x", "--scopes", "root"), "unknown scope"),
        (("keys", "create", "--name", "x", "--tpm", "699764250556884320256"), "tpm must be an integer from 1 to"),
        (("keys", "show", "key_missing"), "no key with id"),
        (("keys", "update", "key_missing"), "nothing to update"),
    ],
)
def test_cli_mistakes_are_one_line_errors(stack, args, message):
    result = cli(stack.redis.port, *args)
    assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr


def test_cli_with_unreachable_redis_fails_fast_and_clearly():
    result = cli(free_port(), "keys", "list")
    assert result.returncode == 1 and "redis" in result.stderr.lower() and "Traceback" not in result.stderr
