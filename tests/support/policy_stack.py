"""A real gateway process (or two) in front of the Ollama double, with a real redis-server.

stack = PolicyStack.start(gateways=2)        # redis + double + 2 gateways sharing that redis
key = stack.create_key(rpm=5)                # through the admin API, returns the plain key
stack.gateways[0].url ...
stack.stop()
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx

from testkit.ollama import start_ollama_double
from testkit.processes import Service, free_port, python_service, redis_service

ADMIN_KEY = "sk-test-bootstrap-admin-key-0123456789abcdef"
JWT_SECRET = "test-jwt-secret-0123456789abcdef0123456789"
PEPPER = "test-pepper-0123456789abcdef"
MODEL = "smollm2:135m"


def gateway_env(*, redis_port: int | None, backend_url: str, **extra: str) -> dict[str, str]:
    env = {
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_BACKENDS": json.dumps([{"kind": "ollama", "url": backend_url, "name": "double"}]),
        "GATEWAY_ADMIN_KEY": ADMIN_KEY,
        "GATEWAY_JWT_SECRET": JWT_SECRET,
        "GATEWAY_KEY_PEPPER": PEPPER,
        "GATEWAY_LOG_LEVEL": "warning",
        "GATEWAY_REDIS_RETRY_S": "1",
        # Generous: on a loaded 2-core host a 0.25 s deadline falls back to per-process counting, which the
        # outage tests (test_redis_down.py, with their own short timeout) are about, and no other test is.
        "GATEWAY_REDIS_TIMEOUT_S": "2",
    }
    if redis_port is not None:
        env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    env.update(extra)
    return env


def start_gateway(env: dict[str, str], timeout: float = 30.0) -> Service:
    port = free_port()
    service = python_service(
        "gateway", ["-m", "gateway"], port, env={**env, "GATEWAY_PORT": str(port)}
    ).start_and_wait_http("/healthz", timeout=timeout)
    return service


@dataclass
class PolicyStack:
    redis: Service | None
    double: Service
    gateways: list[Service] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        *,
        gateways: int = 1,
        with_redis: bool = True,
        redis_extra: tuple[str, ...] = (),
        double_knobs: dict[str, Any] | None = None,
        **env: str,
    ) -> PolicyStack:
        redis = redis_service(extra=redis_extra).start().wait_port() if with_redis else None
        double = start_ollama_double(**(double_knobs or {"tokens": 8}))
        stack = cls(redis, double)
        try:
            base = gateway_env(redis_port=redis.port if redis else None, backend_url=double.url, **env)
            stack.gateways = [start_gateway(base) for _ in range(gateways)]
        except Exception:
            stack.stop()
            raise
        return stack

    @property
    def url(self) -> str:
        return self.gateways[0].url

    def create_key(self, **spec: Any) -> str:
        body = {"name": spec.pop("name", "test-key"), **spec}
        response = httpx.post(f"{self.url}/admin/keys", json=body, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert response.status_code == 201, response.text
        return response.json()["key"]

    def stop(self) -> None:
        for service in [*self.gateways, self.double, self.redis]:
            if service is not None:
                service.stop()


def chat_body(content: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 8, **extra}
