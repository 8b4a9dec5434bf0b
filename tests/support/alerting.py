"""A real Alertmanager for tests (Debian's prometheus-alertmanager), configured by the project's own
scripts/alertmanager_config.py, and a webhook receiver that keeps every notification it gets by path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from testkit.processes import REPO_ROOT, Service, find_binary, free_port

RENDER = REPO_ROOT / "scripts" / "alertmanager_config.py"


def alertmanager_binary() -> str:
    """Debian names it prometheus-alertmanager; the upstream image, alertmanager."""
    try:
        return find_binary("prometheus-alertmanager")
    except RuntimeError:
        return find_binary("alertmanager")


def render_alertmanager_config(env: dict[str, str], output: Path) -> subprocess.CompletedProcess[str]:
    """Run the project's renderer as compose runs it, with only `env` (and PATH)."""
    return subprocess.run(
        [sys.executable, str(RENDER), "--output", str(output)],
        env={"PATH": os.environ.get("PATH", ""), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([find_binary("amtool"), *args], capture_output=True, text=True, timeout=30)


def alertmanager_service(config: Path, port: int) -> Service:
    argv = [
        alertmanager_binary(),
        f"--config.file={config}",
        f"--storage.path={config.parent / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # one instance: no gossip port
        "--data.retention=745h",  # as compose runs it: budget notifications are remembered for a month
    ]
    return Service(name="alertmanager", argv=argv, port=port, cwd=config.parent)


@dataclass
class Notification:
    path: str
    at: float  # time.monotonic() when it arrived
    body: dict[str, Any]

    @property
    def status(self) -> str:
        return str(self.body["status"])

    def alerts(self, status: str | None = None) -> list[dict[str, Any]]:
        return [a for a in self.body["alerts"] if status is None or a["status"] == status]


@dataclass
class WebhookReceiver:
    """An HTTP server on loopback taking Alertmanager's webhook POSTs; `url(path)` is a receiver's address."""

    notifications: list[Notification] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    receiver.notifications.append(Notification(self.path, time.monotonic(), body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def received(self, path: str | None = None) -> list[Notification]:
        with self.lock:
            return [n for n in self.notifications if path is None or n.path == path]

    def alerts(self, path: str, alertname: str, status: str = "firing") -> list[tuple[Notification, dict[str, Any]]]:
        """Every (notification, alert) at `path` for `alertname` with `status`."""
        return [(n, a) for n in self.received(path) for a in n.alerts(status) if a["labels"]["alertname"] == alertname]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class AlertmanagerAPI:
    """https://github.com/prometheus/alertmanager/blob/main/api/v2/openapi.yaml: the calls the tests make."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def alerts(self, **filters: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.base_url}/api/v2/alerts", params=filters, timeout=10)
        response.raise_for_status()
        alerts: list[dict[str, Any]] = response.json()
        return alerts
