"""Write grafana/dashboards/*.json: the overview, the per-model dashboard and the rollouts dashboard.

Dashboards are code: change this file and run `python grafana/build_dashboards.py`. A test checks
that the committed JSON is what this file builds, and another runs every query it contains
against a real Prometheus that scraped a real gateway.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATASOURCE = {"type": "prometheus", "uid": "prometheus"}  # grafana/provisioning/datasources
DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboards"
SECONDS_PER_MONTH = 30 * 24 * 3600
# Errors an operator can act on; client_error and cancelled are the callers' doing.
SERVER_ERRORS = 'outcome=~"backend_error|timeout|unavailable"'


@dataclass(frozen=True, kw_only=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True, kw_only=True)
class Panel:
    title: str
    queries: list[Query]
    unit: str = "short"
    kind: str = "timeseries"  # or "stat"
    description: str = ""
    width: int = 8
    mappings: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class Row:
    title: str
    panels: list[Panel]


def quantiles(metric: str, by: str, selector: str, qs: tuple[float, ...] = (0.5, 0.95, 0.99)) -> list[Query]:
    """histogram_quantile queries for a histogram, one per quantile."""
    return [
        Query(
            expr=f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{selector}}}[$__rate_interval])))",
            legend=f"p{int(q * 100)} {{{{{by.split(',')[0].strip()}}}}}",
        )
        for q in qs
    ]


def ratio(metric: str, good: str, by: str, selector: str, window: str) -> str:
    """good/total per `by`, kept at 0 (not missing) when no good sample exists yet."""
    sel = f"{selector}, {good}" if selector else good
    total = f"sum by ({by}) (increase({metric}{{{selector}}}[{window}]))"
    return f"(sum by ({by}) (increase({metric}{{{sel}}}[{window}])) or {total} * 0) / {total}"


def traffic_panels(sel: str, by: str) -> list[Panel]:
    return [
        Panel(title="Requests per second by outcome", unit="reqps",
              queries=[Query(expr=f"sum by ({by}, outcome) (rate(gateway_llm_requests_total{{{sel}}}[$__rate_interval]))",
                             legend=f"{{{{{by}}}}} {{{{outcome}}}}")]),
        Panel(title="Server error ratio", unit="percentunit",
              description="backend_error, timeout and unavailable outcomes over all requests",
              queries=[Query(expr=ratio("gateway_llm_requests_total", SERVER_ERRORS, by, sel, "$__rate_interval"),
                             legend=f"{{{{{by}}}}}")]),
        Panel(title="Requests in flight", queries=[Query(
            expr=f"sum by (model, backend) (gateway_requests_in_flight{{{sel}}})", legend="{{model}} @ {{backend}}")]),
    ]


def latency_panels(sel: str, model_sel: str) -> list[Panel]:
    return [
        Panel(title="End-to-end latency", unit="s", queries=quantiles("gateway_e2e_request_latency_seconds", "model", sel)),
        Panel(title="Time to first token (streamed)", unit="s",
              queries=quantiles("gateway_time_to_first_token_seconds", "model", sel)),
        Panel(title="Gateway overhead (outside the backend call)", unit="s",
              queries=quantiles("gateway_overhead_seconds", "model", model_sel)),
        Panel(title="Output tokens per second (throughput)", unit="short", queries=[Query(
            expr=f"sum by (model) (rate(gateway_generation_tokens_total{{{sel}}}[$__rate_interval]))", legend="{{model}}")]),
        Panel(title="Decode speed per request (median, tokens/s)", unit="short", queries=[Query(
            expr="1 / histogram_quantile(0.5, sum by (model, le) "
                 f"(rate(gateway_time_per_output_token_seconds_bucket{{{sel}}}[$__rate_interval])))", legend="{{model}}")]),
        Panel(title="HTTP latency p95 by route", unit="s", queries=[Query(
            expr="histogram_quantile(0.95, sum by (handler, le) (rate(http_request_duration_seconds_bucket[$__rate_interval])))",
            legend="{{handler}}")]),
    ]


def cache_and_limit_panels(model_sel: str) -> list[Panel]:
    return [
        Panel(title="Cache hit ratio", unit="percentunit", queries=[Query(
            expr=ratio("gateway_cache_requests_total", 'result="hit"', "model", model_sel, "$__rate_interval"),
            legend="{{model}}")]),
        Panel(title="Cache lookups by result", unit="reqps", queries=[Query(
            expr=f"sum by (result) (rate(gateway_cache_requests_total{{{model_sel}}}[$__rate_interval]))", legend="{{result}}")]),
        Panel(title="Rate-limited requests by limit", unit="reqps", queries=[Query(
            expr="sum by (kind) (rate(gateway_rate_limited_total[$__rate_interval]))", legend="{{kind}}")]),
    ]



STATE_MAPPINGS = [{"type": "value", "options": {
    "0": {"text": "closed", "color": "green"}, "1": {"text": "half-open", "color": "orange"},
    "2": {"text": "open", "color": "red"}}}]
UP_MAPPINGS = [{"type": "value", "options": {"0": {"text": "down", "color": "red"}, "1": {"text": "up", "color": "green"}}}]


def backend_panels(backend_sel: str, model_sel: str) -> list[Panel]:
    return [
        Panel(title="Circuit state (worst replica)", kind="stat", mappings=STATE_MAPPINGS, queries=[Query(
            expr=f"max by (backend) (gateway_circuit_state{{{backend_sel}}})", legend="{{backend}}")]),
        Panel(title="Backend reachable (any replica)", kind="stat", mappings=UP_MAPPINGS, queries=[Query(
            expr=f"max by (backend) (gateway_backend_up{{{backend_sel}}})", legend="{{backend}}")]),
        Panel(title="Retries and failovers", unit="reqps", queries=[
            Query(expr=f"sum by (model) (rate(gateway_retries_total{{{model_sel}}}[$__rate_interval]))", legend="retries {{model}}"),
            Query(expr=f"sum by (model) (rate(gateway_failovers_total{{{model_sel}}}[$__rate_interval]))", legend="failovers {{model}}"),
        ]),
    ]


def platform_panels() -> list[Panel]:
    return [
        Panel(title="Scrape targets up", kind="stat", mappings=UP_MAPPINGS, width=12,
              description="gateway replicas, nginx and Redis exporters, Prometheus itself",
              queries=[Query(expr="up", legend="{{job}} {{instance}}")]),
        Panel(title="Redis failures seen by gateways", unit="ops", width=12, queries=[Query(
            expr="sum by (operation) (rate(gateway_redis_errors_total[$__rate_interval]))", legend="{{operation}}")]),
    ]


def cost_panels(model_sel: str) -> list[Panel]:
    tokens = (f"(sum(rate(gateway_prompt_tokens_total{{{model_sel}}}[1h])) "
              f"+ sum(rate(gateway_generation_tokens_total{{{model_sel}}}[1h])))")
    hosted = f"sum(rate(gateway_hosted_api_cost_usd_total{{{model_sel}}}[1h]))"
    return [
        Panel(title="Tokens per second (input and output)", unit="short", queries=[
            Query(expr=f"sum by (model) (rate(gateway_prompt_tokens_total{{{model_sel}}}[$__rate_interval]))", legend="input {{model}}"),
            Query(expr=f"sum by (model) (rate(gateway_generation_tokens_total{{{model_sel}}}[$__rate_interval]))", legend="output {{model}}"),
        ]),
        Panel(title="Monthly cost: hosted API equivalent vs own GPU (break-even)", unit="currencyUSD",
              description="What this month's traffic (at the last hour's rate) would cost on a hosted API, "
                          "against the configured monthly cost of the GPU box. Above the line, self-hosting pays.",
              queries=[Query(expr=f"{hosted} * {SECONDS_PER_MONTH}", legend="hosted API, projected per month"),
                       Query(expr="max(gateway_gpu_monthly_cost_usd)", legend="GPU box per month (break-even)")]),
        Panel(title="Tokens per month: served vs break-even", unit="short",
              description="Tokens a month at the last hour's rate, and the monthly tokens at which the hosted "
                          "API would cost as much as the GPU box.",
              queries=[Query(expr=f"{tokens} * {SECONDS_PER_MONTH}", legend="tokens served, projected per month"),
                       Query(expr=f"max(gateway_gpu_monthly_cost_usd) / ({hosted} / {tokens})",
                             legend="break-even tokens per month")]),
        Panel(title="Hosted-API cost of the tokens served (range)", kind="stat", unit="currencyUSD", queries=[Query(
            expr=f"sum by (model) (increase(gateway_hosted_api_cost_usd_total{{{model_sel}}}[$__range]))", legend="{{model}}")]),
    ]


def quality_panels(model_sel: str) -> list[Panel]:
    return [
        Panel(title="Feedback votes (range)", kind="stat", queries=[Query(
            expr=f"sum by (model, rating) (increase(gateway_feedback_total{{{model_sel}}}[$__range]))",
            legend="{{model}} {{rating}}")]),
        Panel(title="Satisfaction (thumbs-up share, 1h)", unit="percentunit", queries=[Query(
            expr=ratio("gateway_feedback_total", 'rating="up"', "model", model_sel, "1h"), legend="{{model}}")]),
        Panel(title="JSON format compliance (valid share, 30m)", unit="percentunit", queries=[Query(
            expr=ratio("gateway_format_compliance_total", 'result="valid"', "model", model_sel, "30m"), legend="{{model}}")]),
    ]


def render_panel(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": panel.unit}
    if panel.mappings:
        defaults["mappings"] = panel.mappings
    return {
        "id": panel_id, "type": panel.kind, "title": panel.title, "description": panel.description,
        "datasource": DATASOURCE, "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}} if panel.kind == "timeseries"
        else {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "background"},
        # `metric{}` is what an empty selector leaves behind; drop the braces for readability.
        "targets": [{"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": q.expr.replace("{}", ""),
                     "legendFormat": q.legend}
                    for i, q in enumerate(panel.queries)],
    }


def render_rows(rows: list[Row]) -> list[dict[str, Any]]:
    """Lay rows out on Grafana's 24-column grid, panels left to right, wrapping."""
    out: list[dict[str, Any]] = []
    panel_id, y = 1, 0
    for row in rows:
        out.append({"id": panel_id, "type": "row", "title": row.title, "collapsed": False,
                    "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        panel_id, y, x = panel_id + 1, y + 1, 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y = 0, y + 8
            out.append(render_panel(panel, panel_id, x, y))
            panel_id, x = panel_id + 1, x + panel.width
        y += 8
    return out


def query_variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {"name": name, "label": label, "type": "query", "datasource": DATASOURCE,
            "query": {"query": query, "refId": f"{name}-variable"}, "definition": query,
            "refresh": 2, "multi": True, "includeAll": True, "current": {"text": "All", "value": "$__all"},
            "sort": 1}


def dashboard(uid: str, title: str, rows: list[Row], variables: list[dict[str, Any]],
              annotations: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "uid": uid, "title": title, "tags": ["slm-stack"], "timezone": "browser", "schemaVersion": 39,
        "editable": False, "refresh": "30s", "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": variables}, "annotations": {"list": annotations or []}, "panels": render_rows(rows),
    }


def overview() -> dict[str, Any]:
    return dashboard("slm-overview", "SLM stack: overview", [
        Row(title="Traffic", panels=traffic_panels("", "model")),
        Row(title="Latency", panels=latency_panels("", "")),
        Row(title="Cache and rate limits", panels=cache_and_limit_panels("")),
        Row(title="Backends", panels=backend_panels("", "")),
        Row(title="Platform", panels=platform_panels()),
        Row(title="Usage and cost", panels=cost_panels("")),
        Row(title="Quality", panels=quality_panels("")),
    ], [])


def per_model() -> dict[str, Any]:
    sel, model_sel, backend_sel = 'model=~"$model", backend=~"$backend"', 'model=~"$model"', 'backend=~"$backend"'
    return dashboard("slm-model", "SLM stack: per model", [
        Row(title="Traffic", panels=traffic_panels(sel, "backend")),
        Row(title="Latency", panels=latency_panels(sel, model_sel)),
        Row(title="Cache", panels=cache_and_limit_panels(model_sel)[:2]),
        Row(title="Backends", panels=backend_panels(backend_sel, model_sel)),
        Row(title="Usage and cost", panels=cost_panels(model_sel)),
        Row(title="Quality", panels=quality_panels(model_sel)),
    ], [
        query_variable("model", "Model", "label_values(gateway_llm_requests_total, model)"),
        query_variable("backend", "Backend", 'label_values(gateway_llm_requests_total{model=~"$model"}, backend)'),
    ])


# A replica's rollback counter for a route is born at 1, and increase() cannot see a series' first
# sample: the second term catches series born in the window (as the alert in prometheus/rules does).
ROLLBACKS_IN = ("sum by (route, reason) (increase(gateway_rollbacks_total{{{sel}}}[{w}])) > 0 or "
                "sum by (route, reason) (gateway_rollbacks_total{{{sel}}} unless gateway_rollbacks_total{{{sel}}} "
                "offset {w}) > 0")


def share_of(metric: str, by: str, part: str, sel: str, window: str) -> str:
    """Each `part` value's share of `metric` within its `by` group (e.g. each variant's share of a route)."""
    return (f"sum by ({by}, {part}) (increase({metric}{{{sel}}}[{window}])) / ignoring ({part}) group_left "
            f"sum by ({by}) (increase({metric}{{{sel}}}[{window}]))")


def rollout_panels(sel: str, route_sel: str) -> list[Row]:
    by = "model, variant"  # model is the route's name on routed requests
    return [
        Row(title="Variants side by side", panels=[
            Panel(title="Traffic share by variant", unit="percentunit", description="Each variant's share of "
                  "the route's requests; compare with the configured weights next to it",
                  queries=[Query(expr=share_of("gateway_llm_requests_total", "model", "variant", sel, "$__rate_interval"),
                                 legend="{{variant}}")]),
            Panel(title="Configured weight by variant (%)", unit="percent",
                  description="The route's current weights; steps and rollbacks show as jumps",
                  queries=[Query(expr=f"max by (route, variant) (gateway_route_weight{{{route_sel}}})",
                                 legend="{{variant}}")]),
            Panel(title="Rollbacks (since the gateways started)", kind="stat", description="Canaries rolled "
                  "back by the guard, by the signal that breached; each one is also an annotation on the graphs",
                  queries=[Query(expr=f"sum by (route, reason) (gateway_rollbacks_total{{{route_sel}}})",
                                 legend="{{route}} {{reason}}")]),
            Panel(title="Server error ratio by variant", unit="percentunit", queries=[Query(
                expr=ratio("gateway_llm_requests_total", SERVER_ERRORS, by, sel, "$__rate_interval"),
                legend="{{variant}}")]),
            Panel(title="Time to first token p95 by variant", unit="s",
                  queries=quantiles("gateway_time_to_first_token_seconds", "variant", sel, (0.95,))),
            Panel(title="Output tokens per second by variant", unit="short", queries=[Query(
                expr=f"sum by (variant) (rate(gateway_generation_tokens_total{{{sel}}}[$__rate_interval]))",
                legend="{{variant}}")]),
        ]),
        Row(title="Quality by variant", panels=[
            Panel(title="JSON format compliance by variant (valid share, 5m)", unit="percentunit", width=12,
                  queries=[Query(expr=ratio("gateway_format_compliance_total", 'result="valid"', by, sel, "5m"),
                                 legend="{{variant}}")]),
            Panel(title="Feedback by variant (thumbs up/down share, 1h)", unit="percentunit", width=12,
                  queries=[Query(expr=share_of("gateway_feedback_total", "model, variant", "rating", sel, "1h"),
                                 legend="{{variant}} {{rating}}")]),
        ]),
    ]


def rollouts() -> dict[str, Any]:
    sel, route_sel = 'model=~"$route"', 'route=~"$route"'
    route = {"name": "route", "label": "Route", "type": "query", "datasource": DATASOURCE,
             "query": {"query": "label_values(gateway_route_weight, route)", "refId": "route-variable"},
             "definition": "label_values(gateway_route_weight, route)", "refresh": 2, "multi": False,
             "includeAll": False, "sort": 1}
    rollbacks = {"name": "Rollbacks", "datasource": DATASOURCE, "enable": True, "iconColor": "red",
                 "expr": ROLLBACKS_IN.format(sel=route_sel, w="1m"), "step": "60s",
                 "titleFormat": "Rollback of a canary on {{route}}", "textFormat": "breached: {{reason}}",
                 "tagKeys": "route,reason", "useValueForTime": False}
    return dashboard("slm-rollouts", "SLM stack: rollouts", rollout_panels(sel, route_sel), [route], [rollbacks])


DASHBOARDS = {"overview.json": overview, "per-model.json": per_model, "rollouts.json": rollouts}


def render_all() -> dict[str, str]:
    """File name -> JSON text, exactly as committed."""
    return {name: json.dumps(build(), indent=2) + "\n" for name, build in DASHBOARDS.items()}


if __name__ == "__main__":
    DASHBOARD_DIR.mkdir(exist_ok=True)
    for name, text in render_all().items():
        (DASHBOARD_DIR / name).write_text(text)
        print(f"wrote {DASHBOARD_DIR / name}")
