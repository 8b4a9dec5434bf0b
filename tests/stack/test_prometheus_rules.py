"""promtool over the shipped Prometheus config, rules, and alert unit tests (what CI must pass)."""

from __future__ import annotations

from pathlib import Path

import yaml

from testkit.processes import free_port
from tests.support.prometheus import CONFIG_PATH, PROMETHEUS_DIR, promtool, render_config, write_config

RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.test.yml"))


def test_promtool_check_config_accepts_the_shipped_config() -> None:
    result = promtool("check", "config", str(CONFIG_PATH))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in result.stdout, "rule_files does not load every rule file"


def test_promtool_check_config_accepts_the_loopback_rendering(tmp_path: Path) -> None:
    path = write_config(tmp_path, render_config(gateway_targets=["127.0.0.1:1"], self_port=free_port()))
    result = promtool("check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    assert RULE_FILES, "no rule files under prometheus/rules"
    result = promtool("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_alert_unit_tests_pass() -> None:
    assert RULE_TESTS, "no promtool tests under prometheus/tests"
    result = promtool("test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def alert_names() -> set[str]:
    return {
        rule["alert"]
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = alert_names()
    assert names, "no alerts defined"
    assert names - firing == set(), f"alerts never shown to fire: {sorted(names - firing)}"
    assert names - quiet == set(), f"alerts never shown to stay quiet: {sorted(names - quiet)}"


def test_the_alerts_operators_rely_on_exist() -> None:
    required = {
        "GatewayHighErrorRate",
        "GatewayHighLatencyP95",
        "GatewayTTFTRegression",
        "GatewayCircuitOpen",
        "GatewayBackendDown",
        "RedisDown",
        "GatewayFormatComplianceLow",
        "GatewayFeedbackSatisfactionDropping",
    }
    assert required <= alert_names()


def test_shipped_config_discovers_gateway_replicas_by_dns() -> None:
    jobs = {job["job_name"]: job for job in yaml.safe_load(CONFIG_PATH.read_text())["scrape_configs"]}
    assert jobs["gateway"]["dns_sd_configs"] == [
        {"names": ["gateway"], "type": "A", "port": 8000, "refresh_interval": "15s"}
    ]
    assert {"gateway", "nginx", "redis", "prometheus"} <= set(jobs)
