"""push with a `deploy` section: the version lands in the Ollama double, and the route change goes to a
gateway admin API over HTTP. Gateway errors are one clear line (exit code 2) and leave the version pushed.

The admin API here is a small real HTTP server that keeps routes the way the gateway's
route API does and records every request it receives (the gateway's own route API is tested in tests/gateway).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from testkit.ollama import OllamaDoubleControl, running_ollama_double
from tests.trainer.conftest import write_config
from tests.trainer.test_push import _fake_earlier_stages, _tiny_gguf
from trainer.config import load_config
from trainer.errors import DeployError, StageOrderError
from trainer.manifest import format_versions, list_versions
from trainer.stages import deploy_stage, push_stage

REPO = Path(__file__).resolve().parents[2]
KEY = "sk-deploy-test-admin-0123456789"


class AdminAPI(ThreadingHTTPServer):
    """Routes kept per the contract; models are whatever the Ollama double lists; `refuse` forces a status."""

    def __init__(self, ollama_url: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.ollama_url = ollama_url
        self.routes: dict[str, dict[str, Any]] = {}
        self.received: list[tuple[str, str, Any]] = []
        self.refuse: tuple[int, str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: AdminAPI

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, param: str | None = None) -> None:
        self._answer(
            status, {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}
        )

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.server.received.append((self.command, self.path, body))
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            return self._error(401, "invalid API key")
        if self.path == "/v1/models":
            tags = httpx.get(self.server.ollama_url + "/api/tags").json()["models"]
            return self._answer(200, {"object": "list", "data": [{"id": m["name"], "object": "model"} for m in tags]})
        if self.path == "/admin/routes":
            return self._answer(200, {"routes": list(self.server.routes.values())})
        name = self.path.removeprefix("/admin/routes/")
        if self.command == "GET":
            route = self.server.routes.get(name)
            return self._answer(200, route) if route else self._error(404, f"no route named {name}")
        if self.server.refuse:
            return self._error(self.server.refuse[0], self.server.refuse[1], "variants")
        version = self.server.routes.get(name, {}).get("version", 0) + 1
        self.server.routes[name] = {"name": name, **body, "version": version, "updated_at": 1.0}
        self._answer(200, self.server.routes[name])

    do_GET = do_PUT = _handle


@pytest.fixture()
def stack() -> Iterator[tuple[Any, AdminAPI]]:
    with running_ollama_double() as double:
        admin = AdminAPI(double.url)
        thread = threading.Thread(target=admin.serve_forever, daemon=True)
        thread.start()
        try:
            yield double, admin
        finally:
            admin.shutdown()
            admin.server_close()


def _config(tmp_path: Path, double_url: str, admin_url: str, **deploy: Any) -> Path:
    path = write_config(
        tmp_path / "run.yaml",
        source="x/y",
        data_paths=["d.jsonl"],
        output_dir=str(tmp_path / "out"),
        ollama={"host": double_url, "model": "orders", "retries": 1, "retry_backoff_s": 0},
        deploy={
            "route": "orders",
            "canary_percent": 10,
            "steps": [50, 100],
            "step_after_requests": 20,
            "gateway_url": admin_url,
            "admin_key_env": "TEST_DEPLOY_KEY",
            "model_wait_s": 5,
            **deploy,
        },
    )
    out = tmp_path / "out"
    (out / "export").mkdir(parents=True)
    _fake_earlier_stages(out, _tiny_gguf(out / "export" / "model-q4_k_m.gguf", fill=0.5))
    return path


def test_first_push_creates_the_route_and_the_second_becomes_a_10_percent_canary(tmp_path, stack, monkeypatch):
    double, admin = stack
    monkeypatch.setenv("TEST_DEPLOY_KEY", KEY)
    cfg = load_config(_config(tmp_path, double.url, admin.url))

    first = push_stage(cfg)
    assert first["deploy"]["action"] == "created" and first["deploy"]["route_version"] == 1
    assert admin.routes["orders"]["variants"] == [{"model": "orders:v1", "weight": 100, "params": {}, "adapter": None}]
    second = push_stage(cfg)
    puts = [body for method, _, body in admin.received if method == "PUT"]
    assert puts[-1]["variants"] == [
        {"model": "orders:v1", "weight": 90, "params": {}, "adapter": None},
        {"model": "orders:v2", "weight": 10, "params": {}, "adapter": None},
    ]
    assert puts[-1]["guard"] == {"steps": [50, 100], "step_after_requests": 20}
    assert second["deploy"] | {"variants": None} == {
        "route": "orders",
        "gateway_url": admin.url,
        "model": "orders:v2",
        "action": "canary",
        "stable": "orders:v1",
        "replaced": [],
        "route_version": 2,
        "updated_at": 1.0,
        "variants": None,
        "guard": {"steps": [50, 100], "step_after_requests": 20},
    }
    created = OllamaDoubleControl(double.url).stats()["created"]
    assert {"orders:v1", "orders:v2"} <= set(created) and "orders:latest" not in created  # latest never moved
    assert [m["deploy"]["model"] for m in list_versions(cfg.output_dir)] == ["orders:v1", "orders:v2"]
    table = format_versions(list_versions(cfg.output_dir)).splitlines()
    assert table[1].endswith("orders created 100%") and table[2].endswith("orders canary 10%")


def _cli(*args: str, key: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TEST_DEPLOY_KEY"}
    if key is not None:
        env["TEST_DEPLOY_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "trainer", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_a_missing_or_wrong_key_fails_before_anything_is_pushed(tmp_path, stack):
    double, admin = stack
    config = str(_config(tmp_path, double.url, admin.url))
    for key, message in (
        (None, "$TEST_DEPLOY_KEY (deploy.admin_key_env); it is not set"),
        (
            "sk-wrong",
            "gateway refused GET /admin/routes (401): invalid API key; is $TEST_DEPLOY_KEY an admin-scoped key",
        ),
    ):
        done = _cli("push", "--config", config, key=key)
        assert done.returncode == 2, done.stderr
        (line,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert message in line and "Traceback" not in done.stderr
    assert OllamaDoubleControl(double.url).stats()["created"] == {}
    assert list_versions(tmp_path / "out") == []


def test_the_admin_key_may_come_from_a_file_as_a_docker_secret(tmp_path, stack, monkeypatch):
    double, admin = stack
    key_file = tmp_path / "gateway_admin_key"
    key_file.write_text(KEY + "\n")
    monkeypatch.delenv("TEST_DEPLOY_KEY", raising=False)
    monkeypatch.setenv("TEST_DEPLOY_KEY_FILE", str(key_file))
    cfg = load_config(_config(tmp_path, double.url, admin.url))
    assert push_stage(cfg)["deploy"]["action"] == "created"  # the admin API accepted the key from the file
    monkeypatch.setenv("TEST_DEPLOY_KEY", KEY)
    with pytest.raises(DeployError, match=r"\$TEST_DEPLOY_KEY and \$TEST_DEPLOY_KEY_FILE are both set"):
        push_stage(cfg)
    monkeypatch.delenv("TEST_DEPLOY_KEY")
    key_file.unlink()
    with pytest.raises(DeployError, match=r"\$TEST_DEPLOY_KEY_FILE=.*: cannot read it"):
        push_stage(cfg)


def test_a_server_without_the_route_api_is_never_taken_for_an_empty_gateway(tmp_path, stack, monkeypatch):
    double, _ = stack
    monkeypatch.setenv("TEST_DEPLOY_KEY", KEY)
    cfg = load_config(_config(tmp_path, double.url, double.url))  # gateway_url points at Ollama by mistake
    with pytest.raises(DeployError, match=r"gateway refused GET /admin/routes \(404\)"):
        push_stage(cfg)
    assert OllamaDoubleControl(double.url).stats()["created"] == {}


def test_a_refused_route_change_leaves_the_version_pushed_and_deploy_retries_it(tmp_path, stack):
    double, admin = stack
    config = str(_config(tmp_path, double.url, admin.url))
    admin.refuse = (422, "variant weights must sum to 100, got 110")
    done = _cli("push", "--config", config, key=KEY)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert (
        "gateway refused PUT /admin/routes/orders (422): variant weights must sum to 100, got 110 (field variants)"
        in line
    )
    assert "orders:v1 stays pushed in Ollama" in line and "deploy --config ... --version 1" in line
    assert "orders:v1" in OllamaDoubleControl(double.url).stats()["created"]
    (manifest,) = list_versions(tmp_path / "out")
    assert manifest["deploy"]["error"].startswith("gateway refused PUT") and manifest["ollama"]["latest"] is None
    assert format_versions([manifest]).splitlines()[1].endswith("orders NOT DEPLOYED")

    admin.refuse = (404, "unknown model orders:v1")
    done = _cli("deploy", "--config", config, key=KEY)
    assert done.returncode == 2 and "(404): unknown model orders:v1" in done.stderr

    admin.refuse = None
    done = _cli("deploy", "--config", config, "--version", "1", key=KEY)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["action"] == "created"
    assert admin.routes["orders"]["variants"][0]["model"] == "orders:v1"
    (manifest,) = list_versions(tmp_path / "out")
    assert manifest["deploy"]["route_version"] == 1 and "error" not in manifest["deploy"]


def test_deploy_of_a_version_never_pushed_is_a_clear_error(tmp_path, stack, monkeypatch):
    double, admin = stack
    monkeypatch.setenv("TEST_DEPLOY_KEY", KEY)
    cfg = load_config(_config(tmp_path, double.url, admin.url))
    with pytest.raises(StageOrderError, match="no version pushed yet"):
        deploy_stage(cfg)
    push_stage(cfg)
    with pytest.raises(StageOrderError, match="version v3 was never pushed; pushed: v1"):
        deploy_stage(cfg, version=3)


def test_a_version_the_gateway_never_lists_is_a_clear_error(tmp_path, stack, monkeypatch):
    double, admin = stack
    monkeypatch.setenv("TEST_DEPLOY_KEY", KEY)
    other = tmp_path / "other"
    other.mkdir()
    with running_ollama_double(models=("unrelated:v1",)) as elsewhere:
        admin.ollama_url = elsewhere.url  # the gateway serves another Ollama than the one push used
        cfg = load_config(_config(other, double.url, admin.url, model_wait_s=0.5))
        with pytest.raises(DeployError, match=r"does not list orders:v1 after 0.5s"):
            push_stage(cfg)
