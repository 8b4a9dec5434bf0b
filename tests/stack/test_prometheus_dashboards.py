"""Static checks of the Grafana provisioning and dashboards (the live check is in
test_prometheus_integration.py, which runs every query against a real Prometheus)."""

from __future__ import annotations

import re

import yaml

from tests.support.grafana import (
    ALERTS_ROW,
    BUILTINS,
    DASHBOARD_DIR,
    GRAFANA_DIR,
    VARIABLE,
    alert_row_queries,
    all_datasource_uids,
    dashboard_builder,
    load_dashboards,
    panel_queries,
    provisioned_datasource_uid,
    row_panels,
    variables,
)


def test_committed_dashboards_are_what_the_generator_builds() -> None:
    built = dashboard_builder().render_all()
    on_disk = {path.name: path.read_text() for path in DASHBOARD_DIR.glob("*.json")}
    assert on_disk == built, "run `python grafana/build_dashboards.py` and commit the result"


def test_every_datasource_reference_is_the_provisioned_uid() -> None:
    uid = provisioned_datasource_uid()
    for name, board in load_dashboards().items():
        uids = all_datasource_uids(board)
        assert uids, name
        assert set(uids) == {uid}, f"{name} refers to datasources {set(uids)}, provisioned is {uid}"


def test_dashboard_provider_points_at_the_mounted_dashboards() -> None:
    config = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "slm-stack.yml").read_text())
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_dashboards_have_unique_uids_and_panel_ids_on_the_grid() -> None:
    boards = load_dashboards()
    assert {"overview.json", "per-model.json"} <= set(boards)
    assert len({board["uid"] for board in boards.values()}) == len(boards)
    for name, board in boards.items():
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids)), name
        for panel in board["panels"]:
            grid = panel["gridPos"]
            assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, f"{name}: {panel['title']}"


def test_per_model_dashboard_has_model_and_backend_variables() -> None:
    board = load_dashboards()["per-model.json"]
    assert set(variables(board)) == {"model", "backend"}
    exprs = [query.expr for query in panel_queries({"per-model.json": board})]
    assert any('model=~"$model"' in expr for expr in exprs)
    assert any('backend=~"$backend"' in expr for expr in exprs)


def test_queries_only_use_defined_variables() -> None:
    for name, board in load_dashboards().items():
        known = set(variables(board)) | {b.lstrip("$") for b in BUILTINS}
        for query in panel_queries({name: board}):
            used = set(VARIABLE.findall(query.expr))
            assert used <= known, f"{query}: unknown variables {used - known}"


def test_no_panel_groups_by_an_unbounded_label() -> None:
    unbounded = re.compile(r"\b(key_id|api_key|prompt|user|request_id)\b")
    for query in panel_queries(load_dashboards()):
        assert not unbounded.search(query.expr), str(query)


def test_cost_panel_compares_hosted_cost_with_the_gpu_break_even() -> None:
    boards = load_dashboards()
    for name in ("overview.json", "per-model.json"):
        board = boards[name]
        cost = [p for p in board["panels"] if "break-even" in p.get("title", "").lower()]
        assert cost, f"{name} has no break-even cost panel"
        exprs = " ".join(t["expr"] for p in cost for t in p["targets"])
        assert "gateway_hosted_api_cost_usd_total" in exprs and "gateway_gpu_monthly_cost_usd" in exprs


def test_rollouts_dashboard_puts_variants_of_one_route_side_by_side() -> None:
    board = load_dashboards()["rollouts.json"]
    assert board["title"] == "SLM stack: rollouts"
    assert variables(board) == {"route": "label_values(gateway_route_weight, route)"}
    (route,) = board["templating"]["list"]
    assert route["multi"] is False and route["includeAll"] is False  # one route at a time
    queries = panel_queries({"rollouts.json": board})
    needed = {
        "gateway_llm_requests_total",
        "gateway_time_to_first_token_seconds_bucket",
        "gateway_generation_tokens_total",
        "gateway_format_compliance_total",
        "gateway_feedback_total",
        "gateway_route_weight",
        "gateway_rollbacks_total",
    }
    assert needed <= {m for q in queries for m in re.findall(r"gateway_\w+", q.expr)}
    for query in queries:
        assert '"$route"' in query.expr, str(query)  # every panel follows the chosen route
        per_variant = "variant" in query.expr or "reason" in query.expr
        assert per_variant, f"{query}: not split by variant"
    (annotation,) = board["annotations"]["list"]
    assert "gateway_rollbacks_total" in annotation["expr"] and '"$route"' in annotation["expr"]
    assert annotation["datasource"]["uid"] == provisioned_datasource_uid()
    assert "{{reason}}" in annotation["textFormat"]


def test_overview_has_an_alerts_row_with_firing_alerts_and_budget_use_per_key() -> None:
    boards = load_dashboards()
    overview = boards["overview.json"]
    assert [p["title"] for p in overview["panels"] if p["type"] == "row"].count(ALERTS_ROW) == 1
    panels = {panel["title"]: panel for panel in row_panels(overview, ALERTS_ROW)}
    queries = alert_row_queries(boards)
    assert {q.panel for q in queries} == set(panels)
    by_expr = {q.expr: panels[q.panel] for q in queries}

    firing = by_expr['ALERTS{alertstate="firing"}']
    assert firing["type"] == "table"
    (target,) = firing["targets"]
    assert target["instant"] is True and target["format"] == "table"  # one row per alert, labels as columns
    (organize,) = firing["transformations"]
    shown = set(organize["options"]["indexByName"]) - set(organize["options"]["excludeByName"])
    assert {"alertname", "severity", "model", "backend", "name", "owner"} <= shown

    (budget_expr,) = [expr for expr in by_expr if "gateway_key_budget_used_ratio" in expr]
    budget = by_expr[budget_expr]
    assert budget["type"] in {"bargauge", "table"}
    assert re.search(r"by \((?=[^)]*\bname\b)(?=[^)]*\bowner\b)[^)]*\)", budget_expr), budget_expr
    defaults = budget["fieldConfig"]["defaults"]
    assert defaults["unit"] == "percentunit"
    steps = [step["value"] for step in defaults["thresholds"]["steps"]]
    assert steps == [None, 0.8, 0.95, 1.0]

    assert 'count by (severity) (ALERTS{alertstate="firing"})' in by_expr
    assert all(q.dashboard == "overview.json" for q in queries)
    for name, board in boards.items():
        assert name == "overview.json" or not row_panels(board, ALERTS_ROW), f"{name} has an Alerts row"
