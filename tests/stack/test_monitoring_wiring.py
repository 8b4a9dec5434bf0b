"""Compose and the monitoring config agree: what Prometheus scrapes and what Grafana loads are
services, ports and paths that compose actually provides. (prometheus/ and grafana/ are
written on the observability branch; these checks skip until both are in the tree.)"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from testkit.processes import REPO_ROOT
from tests.stack.compose_cli import compose_binary, compose_config, generated_env, yaml_model

PROMETHEUS_YML = REPO_ROOT / "prometheus" / "prometheus.yml"
GRAFANA = REPO_ROOT / "grafana" / "provisioning"


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    return (compose_config(generated_env()) if compose_binary() else yaml_model())["services"]


def mount_targets(service: dict[str, Any]) -> dict[str, str]:
    """container path -> source, for the service's bind mounts."""
    found = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            found[volume["target"]] = str(volume.get("source", ""))
        else:
            source, target = volume.split(":")[:2]
            found[target] = source
    return found


def test_nginx_status_port_serves_health_and_the_exporter(services: dict[str, dict[str, Any]]) -> None:
    port = str(services["nginx"]["environment"]["NGINX_STATUS_PORT"])
    assert f"127.0.0.1:{port}/healthz" in " ".join(services["nginx"]["healthcheck"]["test"])
    scrape = next(a for a in services["nginx-exporter"]["command"] if a.startswith("--nginx.scrape-uri="))
    assert scrape == f"--nginx.scrape-uri=http://nginx:{port}/stub_status"


@pytest.mark.skipif(not PROMETHEUS_YML.exists(), reason="prometheus/ is not in this tree yet")
def test_prometheus_scrapes_services_compose_runs(services: dict[str, dict[str, Any]]) -> None:
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    targets = []
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            targets += static["targets"]
        for dns in job.get("dns_sd_configs", []):
            targets += [f"{name}:{dns['port']}" for name in dns["names"]]
    assert targets
    for target in targets:
        host, _, port = target.rpartition(":")
        if host == "localhost":
            continue  # Prometheus itself
        assert host in services, f"prometheus scrapes {target}, compose has no {host}"
        assert "internal" in (services[host].get("networks") or {}), host
    gateway_port = str(services["gateway"]["environment"]["GATEWAY_PORT"])
    assert f"gateway:{gateway_port}" in targets
    mounts = mount_targets(services["prometheus"])
    assert "/etc/prometheus/prometheus.yml" in mounts
    for pattern in config.get("rule_files", []):
        assert re.match(r"rules/", pattern) and "/etc/prometheus/rules" in mounts


@pytest.mark.skipif(not GRAFANA.exists(), reason="grafana/ is not in this tree yet")
def test_grafana_loads_dashboards_from_where_compose_mounts_them(services: dict[str, dict[str, Any]]) -> None:
    mounts = mount_targets(services["grafana"])
    providers = [p for f in (GRAFANA / "dashboards").glob("*.yml") for p in yaml.safe_load(f.read_text())["providers"]]
    assert providers
    for provider in providers:
        path = provider["options"]["path"]
        assert path in mounts and mounts[path].rstrip("/").endswith("grafana/dashboards"), path
    for f in (GRAFANA / "datasources").glob("*.yml"):
        for source in yaml.safe_load(f.read_text())["datasources"]:
            url = urlsplit(source["url"])
            assert url.hostname in services, source["url"]
            assert url.port == 9090 and url.hostname == "prometheus"
