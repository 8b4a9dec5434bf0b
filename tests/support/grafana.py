"""Read the provisioned Grafana dashboards and turn their queries into plain PromQL."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import yaml

from testkit.processes import REPO_ROOT

GRAFANA_DIR = REPO_ROOT / "grafana"
DASHBOARD_DIR = GRAFANA_DIR / "dashboards"
# Grafana's built-in interval variables, with values that suit a 1 s scrape interval in tests.
BUILTINS = {"$__rate_interval": "15s", "$__interval": "5s", "$__range": "10m"}
VARIABLE = re.compile(r"\$(\w+)")
OVERVIEW = "overview.json"
ALERTS_ROW = "Alerts"


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    expr: str

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel}: {self.expr}"


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARD_DIR.glob("*.json"))}


def panel_queries(dashboards: dict[str, dict[str, Any]]) -> list[PanelQuery]:
    return [
        PanelQuery(name, panel["title"], target["expr"])
        for name, board in dashboards.items()
        for panel in board["panels"]
        for target in panel.get("targets", [])
    ]


def row_panels(board: dict[str, Any], row: str) -> list[dict[str, Any]]:
    """The panels of an open row: those after the row titled `row`, up to the next row."""
    panels: list[dict[str, Any]] = []
    inside = False
    for panel in board["panels"]:
        if panel["type"] == "row":
            inside = panel["title"] == row
        elif inside:
            panels.append(panel)
    return panels


def alert_row_queries(boards: dict[str, dict[str, Any]]) -> list[PanelQuery]:
    """The queries of the overview's "Alerts" row (firing alerts, budget use per key). They only return
    data while an alert fires or a key has a budget, so the live check of every other panel leaves them
    out; a test with a real Alertmanager and a key over its budget checks these."""
    board = boards[OVERVIEW]
    return [
        PanelQuery(OVERVIEW, panel["title"], target["expr"])
        for panel in row_panels(board, ALERTS_ROW)
        for target in panel.get("targets", [])
    ]


def variables(board: dict[str, Any]) -> dict[str, str]:
    """Templating variable name -> its label_values(...) query."""
    return {var["name"]: var["query"]["query"] for var in board.get("templating", {}).get("list", [])}


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace Grafana variables the way Grafana does for a regex matcher (`=~"$model"`)."""
    for name, value in BUILTINS.items():
        expr = expr.replace(name, value)
    return VARIABLE.sub(lambda m: values.get(m.group(1), m.group(0)), expr)


def provisioned_datasource_uid() -> str:
    config = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (datasource,) = config["datasources"]
    return datasource["uid"]


def dashboard_builder() -> ModuleType:
    """grafana/build_dashboards.py, loaded by path (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("build_dashboards", GRAFANA_DIR / "build_dashboards.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def all_datasource_uids(node: Any) -> list[str]:
    """Every datasource uid mentioned anywhere in a dashboard (panels, targets, variables)."""
    found: list[str] = []
    if isinstance(node, dict):
        if isinstance(node.get("datasource"), dict):
            found.append(node["datasource"].get("uid"))
        for value in node.values():
            found += all_datasource_uids(value)
    elif isinstance(node, list):
        for value in node:
            found += all_datasource_uids(value)
    return found
