"""push with a `deploy` section against the real gateway process in front of the Ollama double: the
first version creates the route, the next joins as a canary beside the stable one, the gateway routes
to both, and the gateway's own refusals (a wrong key, a model it does not serve) are one clear line
with the version left pushed. The request shapes alone are checked in test_deploy_push.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from testkit.ollama import OllamaDoubleControl, running_ollama_double
from tests.support.gateway import ADMIN_KEY, running_gateway
from tests.trainer.test_deploy_push import _config
from trainer.config import load_config
from trainer.manifest import list_versions
from trainer.stages import push_stage

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def stack():
    with running_ollama_double() as double, running_gateway([("ollama", double.url)]) as gateway:
        yield double, gateway


def _admin(gateway, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(
        method, gateway.url + path, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10, **kwargs
    )


def test_versions_land_on_the_route_and_the_gateway_serves_both(tmp_path, stack, monkeypatch):
    double, gateway = stack
    monkeypatch.setenv("TEST_DEPLOY_KEY", ADMIN_KEY)
    cfg = load_config(_config(tmp_path, double.url, gateway.url, guard={"min_requests": 1000}))
    first = push_stage(cfg)
    assert first["deploy"]["action"] == "created"
    route = _admin(gateway, "GET", "/admin/routes/orders").json()
    assert [(v["model"], v["weight"]) for v in route["variants"]] == [("orders:v1", 100)]

    second = push_stage(cfg)
    route = _admin(gateway, "GET", "/admin/routes/orders").json()
    assert [(v["model"], v["weight"]) for v in route["variants"]] == [("orders:v1", 90), ("orders:v2", 10)]
    assert route["guard"]["steps"] == [50, 100] and route["guard"]["step_after_requests"] == 20
    assert route["guard"]["min_requests"] == 1000 and route["guard"]["max_error_rate_delta"] == 0.02  # default kept
    assert second["deploy"]["route_version"] == route["version"] and second["deploy"]["stable"] == "orders:v1"
    history = _admin(gateway, "GET", "/admin/routes/orders/history").json()["history"]
    assert [h["why"] for h in history] == ["manual", "manual"]
    assert "orders:latest" not in OllamaDoubleControl(double.url).stats()["created"]

    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=30)
    for model in ("orders:v1", "orders:v2"):  # an admin key may pick the variant, to test the canary
        raw = client.chat.completions.with_raw_response.create(
            model="orders",
            messages=[{"role": "user", "content": "2 red mugs"}],
            extra_headers={"X-Gateway-Variant": model},
        )
        assert raw.headers["X-Model-Variant"] == model and raw.parse().model == model
    assert "orders" in {m.id for m in client.models.list().data}


def _cli(*args: str, key: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TEST_DEPLOY_KEY": key}
    return subprocess.run(
        [sys.executable, "-m", "trainer", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def _error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    return line


def test_the_gateways_refusals_are_one_line_and_the_version_stays_pushed(tmp_path, stack):
    double, gateway = stack
    config = str(_config(tmp_path, double.url, gateway.url))
    line = _error_line(_cli("push", "--config", config, key="sk-not-a-key"))
    assert "gateway refused GET /admin/routes (401)" in line
    assert OllamaDoubleControl(double.url).stats()["created"] == {}  # refused before anything was pushed

    (tmp_path / "blind").mkdir()
    with (
        running_ollama_double(models=("other:v1",)) as elsewhere,
        running_gateway([("ollama", elsewhere.url)]) as blind,
    ):  # serves another Ollama than push uses
        config = str(_config(tmp_path / "blind", double.url, blind.url, model_wait_s=0))
        line = _error_line(_cli("push", "--config", config, key=ADMIN_KEY))
    assert "gateway refused PUT /admin/routes/orders (404)" in line and "orders:v1" in line
    assert "orders:v1 stays pushed in Ollama" in line
    assert "orders:v1" in OllamaDoubleControl(double.url).stats()["created"]
    (manifest,) = list_versions(tmp_path / "blind" / "out")
    assert "(404)" in manifest["deploy"]["error"]
