"""The stack's request path on loopback: real nginx (the shipped config) in front of two real
gateway processes, a real redis-server and the Ollama double as the backend.

    with running_topology(tmp_path, token_delay=0.2) as topo:
        with topo.client("127.0.0.2") as client:      # a distinct source address = its own
            client.post("/v1/chat/completions", ...)   # per-IP limit bucket at the edge
        topo.edge_log()                                # nginx's JSON access-log entries
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from testkit.nginx_render import build_conf_dir
from testkit.ollama import start_ollama_double
from testkit.processes import REPO_ROOT, Service, find_binary, free_port, python_service, redis_service

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
MODEL = "smollm2:135m"


def compose_nginx_environment() -> dict[str, str]:
    """The NGINX_* values compose gives the nginx image (the edge's real limits)."""
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    return {k: str(v) for k, v in services["nginx"]["environment"].items() if k.startswith("NGINX_")}


def loopback_nginx_values(
    public_port: int, status_port: int, tls_port: int, *, plain_http: str = "redirect"
) -> dict[str, str]:
    """Compose's values with only the addresses and ports swapped for loopback ones (and `plain_http`: what
    .env's API_PLAIN_HTTP would say)."""
    values = compose_nginx_environment()
    values.update(
        NGINX_RESOLVER="127.0.0.1",
        NGINX_PUBLIC_PORT=str(public_port),
        NGINX_STATUS_PORT=str(status_port),
        NGINX_TLS_PORT=str(tls_port),
        NGINX_TLS_PUBLIC_PORT=str(tls_port),
        NGINX_PLAIN_HTTP=plain_http,
    )
    return values


def start_nginx(conf: Path, port: int) -> Service:
    argv = [find_binary("nginx"), "-e", "stderr", "-c", str(conf), "-g", "daemon off;"]
    service = Service(name="nginx", argv=argv, port=port).start()
    try:
        service.wait_port(timeout=15)
    except Exception:
        service.kill()
        raise RuntimeError(f"nginx did not start; its log:\n{service.logs()}") from None
    return service


def start_gateway(port: int, *, backend_url: str, redis_url: str, admin_key: str) -> Service:
    env = {
        "GATEWAY_ENV": "development",
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "GATEWAY_BACKENDS": json.dumps([{"kind": "ollama", "url": backend_url, "name": "double"}]),
        "GATEWAY_ADMIN_KEY": admin_key,
        "GATEWAY_JWT_SECRET": secrets.token_urlsafe(32),
        "GATEWAY_KEY_PEPPER": secrets.token_urlsafe(32),
        "REDIS_URL": redis_url,
        "GATEWAY_LOG_LEVEL": "warning",
    }
    service = python_service("gateway", ["-m", "gateway"], port, env=env).start()
    try:
        service.wait_http("/healthz", timeout=30)
    except Exception:
        service.kill()
        raise RuntimeError(f"a gateway did not start; its log:\n{service.logs()}") from None
    return service


@dataclass
class Topology:
    nginx: Service
    status_port: int
    gateways: list[Service]
    redis: Service
    double: Service
    admin_key: str

    @property
    def url(self) -> str:
        return self.nginx.url

    def client(self, source_ip: str = "127.0.0.1", *, timeout: float = 30.0) -> httpx.Client:
        """A client calling the edge from `source_ip` (any 127.x address works on Linux)."""
        transport = httpx.HTTPTransport(local_address=source_ip)
        headers = {"Authorization": f"Bearer {self.admin_key}"}
        return httpx.Client(base_url=self.url, transport=transport, headers=headers, timeout=timeout)

    def edge_log(self) -> list[dict[str, Any]]:
        """nginx's access-log entries so far (its stdout; error lines are not JSON objects)."""
        entries = []
        for line in self.nginx.logs().splitlines():
            if line.startswith("{"):
                entries.append(json.loads(line))
        return entries

    def replica_addresses(self) -> set[str]:
        return {f"127.0.0.1:{g.port}" for g in self.gateways}


@contextlib.contextmanager
def running_topology(workdir: Path, **double_knobs: Any) -> Iterator[Topology]:
    """Start the whole path, bottom up, each part polled until ready; stop it all after."""
    started: list[Service] = []
    try:
        redis = redis_service().start()
        started.append(redis)
        redis.wait_port()
        double = start_ollama_double(models=(MODEL,), **double_knobs)
        started.append(double)
        admin_key = "sk-admin-" + secrets.token_urlsafe(24)
        gateways = []
        for _ in range(2):
            gateway = start_gateway(
                free_port(), backend_url=double.url, redis_url=f"redis://127.0.0.1:{redis.port}/0", admin_key=admin_key
            )
            started.append(gateway)
            gateways.append(gateway)
        public_port, status_port = free_port(), free_port()
        values = loopback_nginx_values(public_port, status_port, free_port())
        conf = build_conf_dir(workdir / "nginx", values, [f"127.0.0.1:{g.port}" for g in gateways])
        nginx = start_nginx(conf, public_port)
        started.append(nginx)
        yield Topology(
            nginx=nginx, status_port=status_port, gateways=gateways, redis=redis, double=double, admin_key=admin_key
        )
    finally:
        for service in reversed(started):
            service.stop()
