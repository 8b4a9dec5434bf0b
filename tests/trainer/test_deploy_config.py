"""The `deploy` section of the run config: every field validated, mistakes named by their dotted key,
and the route change it plans (pure: the current route in, the PUT body out)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.trainer.conftest import write_config
from trainer.config import load_config
from trainer.deploy import plan_route
from trainer.errors import ConfigError

DEPLOY = {
    "route": "orders",
    "canary_percent": 10,
    "steps": [50, 100],
    "step_after_requests": 20,
    "gateway_url": "http://127.0.0.1:9/",
    "guard": {"min_requests": 5},
}


def _load(tmp_path: Path, deploy: object):
    return load_config(
        write_config(tmp_path / "run.yaml", source="x/y", data_paths=["d.jsonl"], output_dir="out", deploy=deploy)
    )


def test_a_full_deploy_section_validates(tmp_path, monkeypatch):
    monkeypatch.delenv("GATEWAY_URL", raising=False)
    cfg = _load(tmp_path, DEPLOY)
    d = cfg.deploy
    assert (d.route, d.canary_percent, d.steps, d.step_after_requests) == ("orders", 10, [50, 100], 20)
    assert d.gateway_url == "http://127.0.0.1:9" and d.admin_key_env == "GATEWAY_ADMIN_KEY"
    assert d.guard.min_requests == 5 and d.guard.max_error_rate_delta is None
    minimal = _load(tmp_path, {"route": "orders"}).deploy
    assert minimal.canary_percent == 10 and minimal.steps == [] and minimal.gateway_url == "http://gateway:8000"
    assert _load(tmp_path, None).deploy is None  # no section: push moves NAME:latest as before


@pytest.mark.parametrize(
    ("deploy", "message"),
    [
        ({**DEPLOY, "canary": 10}, r"unknown key 'deploy\.canary'"),
        ({**DEPLOY, "guard": {"min_request": 5}}, r"unknown key 'deploy\.guard\.min_request'"),
        ({**DEPLOY, "guard": {"steps": [50]}}, r"unknown key 'deploy\.guard\.steps'"),
        ({k: v for k, v in DEPLOY.items() if k != "route"}, r"missing required key 'deploy\.route'"),
        ({**DEPLOY, "route": "orders/v2"}, r"deploy\.route"),
        ({**DEPLOY, "canary_percent": 100}, r"deploy\.canary_percent"),
        ({**DEPLOY, "canary_percent": 0}, r"deploy\.canary_percent"),
        ({**DEPLOY, "steps": [100, 50]}, r"must rise strictly"),
        ({**DEPLOY, "steps": [10, 100]}, r"above canary_percent \(10\)"),
        ({**DEPLOY, "steps": [50, 120]}, r"at most 100"),
        ({**DEPLOY, "step_after_requests": 0}, r"deploy\.step_after_requests"),
        ({**DEPLOY, "guard": {"max_error_rate_delta": 2}}, r"deploy\.guard\.max_error_rate_delta"),
        ({**DEPLOY, "gateway_url": "gateway:8000"}, r"deploy\.gateway_url"),
        ({**DEPLOY, "admin_key_env": "sk-the-key-itself!"}, r"deploy\.admin_key_env"),
    ],
)
def test_deploy_mistakes_are_named(tmp_path, deploy, message):
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, deploy)


def test_a_new_route_gets_the_version_at_100_percent(tmp_path):
    deploy = _load(tmp_path, DEPLOY).deploy
    body = plan_route(None, "orders:v1", deploy)
    assert body["variants"] == [{"model": "orders:v1", "weight": 100, "params": {}, "adapter": None}]
    assert body["guard"] == {"min_requests": 5, "steps": [50, 100], "step_after_requests": 20}
    assert body["fallbacks"] == [] and body["shadow"] is None


def test_an_existing_route_keeps_its_stable_variant_first_and_gains_the_canary(tmp_path):
    deploy = _load(tmp_path, DEPLOY).deploy
    current = {
        "name": "orders",
        "version": 7,
        "updated_at": 1.0,
        "variants": [
            {"model": "orders:v1", "weight": 100, "params": {"temperature": 0.1}, "adapter": None},
            {"model": "orders:v0", "weight": 0, "params": {}, "adapter": None},
        ],
        "fallbacks": ["llama3.2:1b"],
        "shadow": {"model": "llama3.2:1b", "percent": 5.0},
        "guard": {"min_requests": 50, "max_ttft_p95_ratio": 2.0, "steps": [], "step_after_requests": 200},
    }
    body = plan_route(current, "orders:v2", deploy)
    assert body["variants"] == [
        {"model": "orders:v1", "weight": 90, "params": {"temperature": 0.1}, "adapter": None},
        {"model": "orders:v2", "weight": 10, "params": {}, "adapter": None},
    ]
    # the config's overrides win, the route's other guard settings stay
    assert body["guard"] == {
        "min_requests": 5,
        "max_ttft_p95_ratio": 2.0,
        "steps": [50, 100],
        "step_after_requests": 20,
    }
    assert body["fallbacks"] == ["llama3.2:1b"] and body["shadow"] == {"model": "llama3.2:1b", "percent": 5.0}
    assert not {"name", "version", "updated_at"} & body.keys()


def test_the_examples_commented_deploy_section_is_valid(tmp_path):
    """The example config documents `deploy` in comments; uncommented, it must load."""
    example = Path(__file__).resolve().parents[2] / "trainer" / "examples" / "order_json" / "config.yaml"
    lines = example.read_text().splitlines()
    start = lines.index("# deploy:")
    block = [line[2:] for line in lines[start : start + 20] if line.startswith("# ") or line == "#"]
    block = block[: next((i for i, line in enumerate(block[1:], 1) if not line.startswith("  ")), len(block))]
    copy = tmp_path / "config.yaml"
    copy.write_text("\n".join(lines) + "\n" + "\n".join(block) + "\n")
    cfg = load_config(copy, {"data.paths": [str(example.parent / "orders.jsonl")]})
    assert cfg.deploy is not None and cfg.deploy.route == "order-json" and cfg.deploy.steps == [50, 100]
