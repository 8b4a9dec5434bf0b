"""A real Prometheus for tests: the shipped prometheus.yml rendered for loopback, on a free port."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import yaml

from testkit.processes import REPO_ROOT, Service, find_binary, free_port

PROMETHEUS_DIR = REPO_ROOT / "prometheus"
CONFIG_PATH = PROMETHEUS_DIR / "prometheus.yml"


def render_config(
    *,
    gateway_targets: list[str],
    self_port: int,
    interval: str = "1s",
    dead_port: int | None = None,
    alertmanager: str | None = None,
) -> dict[str, Any]:
    """The shipped config with only its targets (and, for speed, its intervals) swapped for loopback.

    The gateway's DNS service discovery becomes static loopback targets; the exporters, which do not
    run here, point at a port nobody listens on, so their `up` series exist and read 0. Alerts go to
    `alertmanager` (host:port), or nowhere.
    """
    config = yaml.safe_load(CONFIG_PATH.read_text())
    if alertmanager is None:
        config.pop("alerting")
    else:
        (target,) = config["alerting"]["alertmanagers"]
        target["static_configs"] = [{"targets": [alertmanager]}]
    config["global"]["scrape_interval"] = interval
    config["global"]["evaluation_interval"] = interval
    dead = f"127.0.0.1:{dead_port or free_port()}"
    for job in config["scrape_configs"]:
        if job["job_name"] == "gateway":
            job.pop("dns_sd_configs")
            job["static_configs"] = [{"targets": gateway_targets}]
        elif job["job_name"] == "alertmanager" and alertmanager is not None:
            job["static_configs"] = [{"targets": [alertmanager]}]
        elif job["job_name"] == "prometheus":
            job["static_configs"] = [{"targets": [f"127.0.0.1:{self_port}"]}]
        else:
            job["static_configs"] = [{"targets": [dead]}]
    return config


def write_config(directory: Path, config: dict[str, Any], *, minutes_as_seconds: bool = False) -> Path:
    """Write the rendered config next to a copy of rules/, so its relative rule_files still resolve.

    `minutes_as_seconds`: every alert's `for` in minutes becomes as many seconds (time runs 60 times
    faster for the alerts' durations; the rules' queries, windows and labels stay as shipped)."""
    shutil.copytree(PROMETHEUS_DIR / "rules", directory / "rules", dirs_exist_ok=True)
    if minutes_as_seconds:
        for path in (directory / "rules").glob("*.yml"):
            path.write_text(re.sub(r"^(\s+for: )([0-9]+)m$", r"\g<1>\2s", path.read_text(), flags=re.MULTILINE))
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def prometheus_service(config_path: Path, port: int) -> Service:
    argv = [
        find_binary("prometheus"),
        f"--config.file={config_path}",
        f"--storage.tsdb.path={config_path.parent / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    return Service(name="prometheus", argv=argv, port=port, cwd=config_path.parent)


def promtool(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([find_binary("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


class PrometheusAPI:
    """The few HTTP API calls the tests make (https://prometheus.io/docs/prometheus/latest/querying/api/)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def query(self, expr: str) -> dict[str, Any]:
        """Run an instant query; return the JSON body (status is "error" for a query that does not parse)."""
        response = httpx.get(f"{self.base_url}/api/v1/query", params={"query": expr}, timeout=10)
        return response.json()

    def label_values(self, label: str, match: str) -> list[str]:
        response = httpx.get(f"{self.base_url}/api/v1/label/{label}/values", params={"match[]": match}, timeout=10)
        return response.json()["data"]

    def targets(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.base_url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]

    def rules(self) -> list[dict[str, Any]]:
        groups = httpx.get(f"{self.base_url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]
