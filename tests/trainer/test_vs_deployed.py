"""`evaluation.baseline: route:NAME`: a pushed version is compared with the route's deployed (stable)
variant through the real gateway on the same held-out rows, and goes on the route only if it wins.

The gateway's backend here is a server whose models answer from a table (tests/support/answer_server.py),
so each version's score is known: on the four held-out rows v1 answers two right, v2 four, v3 one.
Pushes go to the Ollama double. The real model version of this runs in test_feedback_loop_e2e.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from testkit.ollama import OllamaDoubleControl, running_ollama_double
from testkit.processes import Service, free_port, python_service
from tests.support.gateway import ADMIN_KEY, running_gateway
from tests.trainer.conftest import write_config
from tests.trainer.test_push import _fake_earlier_stages, _tiny_gguf
from trainer.config import load_config
from trainer.errors import ConfigError, DeployError, GateRefused
from trainer.manifest import format_versions, list_versions
from trainer.stages import push_stage

REPO = Path(__file__).resolve().parents[2]
SYSTEM = "Reply with the order as JSON."
HELD = [(f"send {n} red mugs", json.dumps({"product": "mug", "quantity": n})) for n in (1, 2, 3, 4)]
RIGHT = {"orders:v1": (0, 1), "orders:v2": (0, 1, 2, 3), "orders:v3": (0,)}


@pytest.fixture()
def stack(tmp_path: Path) -> Iterator[tuple[Service, Service, Service]]:
    table = {model: {HELD[i][0]: HELD[i][1] for i in right} for model, right in RIGHT.items()}
    (tmp_path / "answers.json").write_text(json.dumps(table))
    port = free_port()
    answers = python_service(
        "answers",
        ["-m", "tests.support.answer_server", "--port", str(port), "--answers", str(tmp_path / "answers.json")],
        port,
    )
    answers.start_and_wait_http("/v1/models")
    try:
        with running_ollama_double() as double, running_gateway([("openai", answers.url)]) as gateway:
            yield double, gateway, answers
    finally:
        answers.stop()


def _config(tmp_path: Path, double: Service, gateway: Service, **evaluation: Any) -> Path:
    out = tmp_path / "out"
    path = write_config(
        tmp_path / "run.yaml",
        source="x/y",
        data_paths=["d.jsonl"],
        output_dir=str(out),
        ollama={"host": double.url, "model": "orders", "retries": 1, "retry_backoff_s": 0},
        evaluation={"checks": ["exact_match", "json_valid"], "max_new_tokens": 8, **evaluation},
        deploy={
            "route": "orders",
            "canary_percent": 10,
            "steps": [50, 100],
            "gateway_url": gateway.url,
            "admin_key_env": "TEST_DEPLOY_KEY",
            "model_wait_s": 5,
        },
    )
    if not (out / "export").exists():
        (out / "export").mkdir(parents=True)
        _fake_earlier_stages(out, _tiny_gguf(out / "export" / "model-q4_k_m.gguf", fill=0.5))
        rows = [
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}, {"role": "assistant", "content": a}]
            for q, a in HELD
        ]
        (out / "data" / "eval.jsonl").write_text("".join(json.dumps({"messages": m}) + "\n" for m in rows))
    return path


def _admin(gateway: Service, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(
        method, gateway.url + path, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10, **kwargs
    )


def _variants(gateway: Service) -> list[tuple[str, int]]:
    return [(v["model"], v["weight"]) for v in _admin(gateway, "GET", "/admin/routes/orders").json()["variants"]]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trainer", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TEST_DEPLOY_KEY": ADMIN_KEY},
    )


def _error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    return line


def test_a_version_that_beats_the_deployed_one_goes_out_and_one_that_loses_stays_off_the_route(
    tmp_path, stack, monkeypatch
):
    double, gateway, answers = stack
    monkeypatch.setenv("TEST_DEPLOY_KEY", ADMIN_KEY)
    config = _config(tmp_path, double, gateway)
    assert push_stage(load_config(config))["deploy"]["action"] == "created"  # v1: nothing to compare with yet
    route = _admin(gateway, "GET", "/admin/routes/orders").json()
    route["variants"][0]["params"] = {"top_p": 0.5}  # what the route's users get: the comparison applies it
    assert (
        _admin(
            gateway,
            "PUT",
            "/admin/routes/orders",
            json={k: route[k] for k in ("variants", "fallbacks", "shadow", "guard")},
        ).status_code
        == 200
    )

    by_route = load_config(config, {"evaluation.baseline": "route:orders"})
    second = push_stage(by_route)
    assert second["vs_deployed"]["deployed"] == {
        "model": "orders:v1",
        "scores": {"exact_match": 0.5, "json_valid": 0.5},
    }
    assert second["vs_deployed"]["new"] == {"model": "orders:v2", "scores": {"exact_match": 1.0, "json_valid": 1.0}}
    assert second["vs_deployed"]["gate"] == {"passed": True, "reasons": []} and second["vs_deployed"]["rows"] == 4
    assert second["deploy"]["action"] == "canary" and _variants(gateway) == [("orders:v1", 90), ("orders:v2", 10)]
    calls = httpx.get(answers.url + "/_calls").json()
    assert sorted(c["model"] for c in calls) == ["orders:v1"] * 4 + ["orders:v2"] * 4
    assert all(c["temperature"] == 0 and c["top_p"] == 0.5 and c["max_tokens"] == 8 for c in calls), calls
    examples = json.loads((tmp_path / "out" / "versions" / "v2" / "deployed.json").read_text())["examples"]
    assert [e["new"]["checks"]["exact_match"] for e in examples] == [True] * 4
    assert [e["deployed"]["output"] for e in examples][2:] == ["I do not know"] * 2

    # v3 answers one row of four: it loses to the deployed v1 (two), stays pushed, and the route is unchanged.
    line = _error_line(_cli("push", "--config", str(config), "--set", "evaluation.baseline=route:orders"))
    assert "orders:v3 0.250 does not beat the deployed orders:v1 0.500" in line, line
    assert "orders:v3 stays pushed in Ollama but is not on route orders" in line and "--version 3 --force" in line
    assert "orders:v3" in OllamaDoubleControl(double.url).stats()["created"]
    assert _variants(gateway) == [("orders:v1", 90), ("orders:v2", 10)]
    stats = _admin(gateway, "GET", "/admin/routes/orders/stats").json()["variants"]
    assert stats["orders:v1"]["requests"] == 0, stats  # v1 answered v3's comparison directly, not as the route
    third = list_versions(tmp_path / "out")[-1]
    assert third["vs_deployed"]["gate"]["passed"] is False and "error" in third["deploy"]
    assert format_versions([third]).splitlines()[1].endswith("orders NOT DEPLOYED")

    line = _error_line(_cli("deploy", "--config", str(config), "--set", "evaluation.baseline=route:orders"))
    assert "does not beat the deployed orders:v1" in line and "`--force` deploys v3 anyway" in line
    done = _cli("deploy", "--config", str(config), "--set", "evaluation.baseline=route:orders", "--force")
    assert done.returncode == 0, done.stderr
    assert _variants(gateway) == [("orders:v1", 90), ("orders:v3", 10)]
    assert list_versions(tmp_path / "out")[-1]["vs_deployed"]["forced"] is True


def test_a_margin_can_demand_more_or_tolerate_less(tmp_path, stack, monkeypatch):
    double, gateway, _ = stack
    monkeypatch.setenv("TEST_DEPLOY_KEY", ADMIN_KEY)
    config = _config(tmp_path, double, gateway)
    push_stage(load_config(config))  # v1
    with pytest.raises(
        GateRefused,
        match=r"orders:v2 1\.000 does not beat the deployed orders:v1 0\.500 by more "
        r"than 0\.6 \(gate\.deployed_min_score_gain\)",
    ):
        push_stage(load_config(config, {"evaluation.baseline": "route:orders", "gate.deployed_min_score_gain": 0.6}))
    assert _variants(gateway) == [("orders:v1", 100)]
    tolerant = push_stage(
        load_config(config, {"evaluation.baseline": "route:orders", "gate.deployed_min_score_gain": -0.3})
    )  # v3: 0.25 vs 0.5
    assert tolerant["vs_deployed"]["gate"]["passed"] and _variants(gateway) == [("orders:v1", 90), ("orders:v3", 10)]


def test_no_route_to_compare_with_fails_before_anything_is_pushed(tmp_path, stack, monkeypatch):
    double, gateway, _ = stack
    monkeypatch.setenv("TEST_DEPLOY_KEY", ADMIN_KEY)
    config = _config(tmp_path, double, gateway, baseline="route:orders")
    with pytest.raises(
        DeployError, match="has no route 'orders': nothing is deployed to compare with .*use evaluation.baseline: base"
    ):
        push_stage(load_config(config))
    assert OllamaDoubleControl(double.url).stats()["created"] == {}


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"evaluation": {"baseline": "route:"}}, "evaluation.baseline: must be `base` or `route:NAME`"),
        ({"evaluation": {"baseline": "production"}}, "evaluation.baseline: must be `base` or `route:NAME`"),
        ({"evaluation": {"baseline": "route:orders"}}, "evaluation.baseline route:orders needs a `deploy` section"),
        (
            {
                "evaluation": {"baseline": "route:orders"},
                "deploy": {"route": "orders"},
                "push": {"targets": ["llamacpp"], "adapters": {"base": "b"}},
            },
            "push.targets must include ollama",
        ),
        (
            {"gate": {"deployed_min_score_gain": 2}},
            "gate.deployed_min_score_gain: Input should be less than or equal to 1",
        ),
    ],
)
def test_config_mistakes_are_one_line(tmp_path, sections, message):
    path = write_config(
        tmp_path / "run.yaml", source="x/y", data_paths=["d.jsonl"], output_dir=str(tmp_path), **sections
    )
    with pytest.raises(ConfigError, match="invalid config") as err:
        load_config(path)
    assert message in str(err.value)
    done = subprocess.run(
        [sys.executable, "-m", "trainer", "push", "--config", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr and message in done.stderr
