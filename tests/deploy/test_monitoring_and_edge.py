"""Monitoring from the same files compose uses (prometheus/rules, grafana/dashboards), and the edge in
nginx's place: the same limits, /metrics not routed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from testkit.processes import REPO_ROOT
from tests.deploy.chart import CHART, NAMESPACE, RELEASE, by_kind, one, render, render_set

RULES = REPO_ROOT / "prometheus" / "rules"
DASHBOARDS = REPO_ROOT / "grafana" / "dashboards"
MONITORING = (
    "--set",
    "prometheusRule.enabled=true",
    "--set",
    "grafanaDashboards.enabled=true",
    "--set",
    "serviceMonitor.enabled=true",
)


def test_the_chart_reads_rules_and_dashboards_through_links_to_the_compose_files() -> None:
    """One source: the chart's files are symbolic links to the folders compose mounts, not copies."""
    for link, target in (
        (CHART / "files" / "prometheus-rules", RULES),
        (CHART / "files" / "grafana-dashboards", DASHBOARDS),
    ):
        assert link.is_symlink(), f"{link} is a copy: it would drift from {target}"
        assert Path(os.path.realpath(link)) == target.resolve()
        assert not Path(os.readlink(link)).is_absolute(), "a relative link, so every checkout resolves it"


def test_the_prometheus_rule_holds_exactly_the_rule_files_groups() -> None:
    rule = one(render(*MONITORING), "PrometheusRule", f"{RELEASE}-rules")
    expected = [group for path in sorted(RULES.glob("*.yml")) for group in yaml.safe_load(path.read_text())["groups"]]
    assert rule["spec"]["groups"] == expected
    assert len(expected) >= 4
    alerts = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    assert "GatewayCanaryRolledBack" in alerts and "{{ $labels.model }}" in yaml.safe_dump(rule["spec"])


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool comes with Debian's prometheus (make system-deps)"
)
def test_promtool_accepts_the_prometheus_rules_groups(tmp_path: Path) -> None:
    rule = one(render(*MONITORING), "PrometheusRule", f"{RELEASE}-rules")
    path = tmp_path / "rendered.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    proc = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_each_dashboard_is_a_configmap_for_grafanas_sidecar_with_the_files_exact_bytes() -> None:
    maps = by_kind(render(*MONITORING), "ConfigMap")
    files = sorted(DASHBOARDS.glob("*.json"))
    assert len(maps) == len(files) >= 3
    for path in files:
        cm = one(maps, "ConfigMap", f"{RELEASE}-dashboard-{path.stem}")
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"]["grafana_folder"] == "SLM stack"
        assert cm["data"] == {path.name: path.read_text()}


def test_the_service_monitor_scrapes_every_gateway_replicas_metrics() -> None:
    objects = render(*MONITORING, "--set", "serviceMonitor.labels.release=kps")
    monitor = one(objects, "ServiceMonitor", f"{RELEASE}-gateway")
    service = one(objects, "Service", f"{RELEASE}-gateway")
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    redis = one(objects, "ServiceMonitor", f"{RELEASE}-redis")
    assert redis["spec"]["endpoints"][0]["port"] == "metrics"


def test_monitoring_objects_are_off_unless_asked_for() -> None:
    kinds = {o["kind"] for o in render_set("default")}
    assert not {"PrometheusRule", "ServiceMonitor", "ConfigMap"} & kinds


def test_the_ingress_carries_the_edge_limits_of_nginx() -> None:
    ingress = one(render_set("default"), "Ingress", f"{RELEASE}-gateway")
    a = ingress["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    rps = int(a[prefix + "limit-rps"])
    assert rps == 20 and rps * int(a[prefix + "limit-burst-multiplier"]) == 40
    assert a[prefix + "limit-connections"] == "32"
    assert a[prefix + "proxy-body-size"] == "2m"
    assert a[prefix + "proxy-buffering"] == "off"
    assert int(a[prefix + "proxy-read-timeout"]) >= 300
    assert ingress["spec"]["ingressClassName"] == "nginx"


def routed_paths(set_args: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    objects = render(
        "--set", "gatewayApi.enabled=true", "--set-json", 'gatewayApi.parentRefs=[{"name": "edge"}]', *set_args
    )
    ingress = one(objects, "Ingress", f"{RELEASE}-gateway")
    route = one(objects, "HTTPRoute", f"{RELEASE}-gateway")
    paths = [(p["pathType"], p["path"]) for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    kinds = {"PathPrefix": "Prefix", "Exact": "Exact"}
    paths += [
        (kinds[m["path"]["type"]], m["path"]["value"]) for rule in route["spec"]["rules"] for m in rule["matches"]
    ]
    return paths


def matches(path_type: str, path: str, request: str) -> bool:
    """Kubernetes' Prefix matching is by whole path elements; Exact is exact."""
    if path_type == "Exact":
        return request == path
    return request == path or request.startswith(path.rstrip("/") + "/")


@pytest.mark.parametrize("request_path", ["/metrics", "/metrics/", "/metrics/x", "/internal"])
def test_the_edge_does_not_route_metrics_or_anything_unlisted(request_path: str) -> None:
    assert not [p for p in routed_paths() if matches(*p, request_path)]


@pytest.mark.parametrize(
    "request_path",
    ["/v1/chat/completions", "/v1/models", "/auth/token", "/admin/keys", "/healthz", "/readyz", "/openapi.json"],
)
def test_the_edge_routes_the_api_to_the_gateway(request_path: str) -> None:
    paths = routed_paths()
    assert len([p for p in paths if matches(*p, request_path)]) == 2, "once in the Ingress, once in the HTTPRoute"


def test_the_http_route_attaches_to_the_given_gateway_and_reaches_the_gateway_service() -> None:
    objects = render(
        "--set", "gatewayApi.enabled=true", "--set-json", 'gatewayApi.parentRefs=[{"name": "edge", "namespace": "gw"}]'
    )
    route = one(objects, "HTTPRoute", f"{RELEASE}-gateway")
    assert route["spec"]["parentRefs"] == [{"name": "edge", "namespace": "gw"}]
    (rule,) = route["spec"]["rules"]
    assert rule["backendRefs"] == [{"name": f"{RELEASE}-gateway", "port": 8000}]
    assert rule["timeouts"]["request"] == "300s"
