"""Write grafana/dashboards/*.json: the overview, the per-model dashboard and the rollouts dashboard.

Dashboards are code, built with Grafana's Foundation SDK (`grafana-foundation-sdk`, the build for the
Grafana version docker-compose.yml runs): typed builders for the dashboard, its rows, panels, Prometheus
queries, variables and annotations, whose fields and types mypy checks (`make lint`). Change this file
and run `python grafana/build_dashboards.py`. A test checks that the committed JSON is what this file
builds, and another runs every query it contains against a real Prometheus that scraped a real gateway
(all but the overview's "Alerts" row, which only has data while an alert fires or a key has a budget).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self, TypeVar

from grafana_foundation_sdk.builders import bargauge, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as models
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

DATASOURCE_UID = "prometheus"  # grafana/provisioning/datasources
DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboards"
SECONDS_PER_MONTH = 30 * 24 * 3600
PANEL_HEIGHT = 8
# Errors an operator can act on; client_error and cancelled are the callers' doing.
SERVER_ERRORS = 'outcome=~"backend_error|timeout|unavailable"'
ALERTS_ROW = "Alerts"
FIRING = 'ALERTS{alertstate="firing"}'
# Share of this month's budget each key has used (0..1, over 1 once spent), labelled key, name and owner;
# every gateway replica may export it, so the panel takes the highest per key.
BUDGET_USED = "gateway_key_budget_used_ratio"

PanelBuilder = Builder[models.Panel]
# The panel builders with_queries takes: each keeps its own options methods.
P = TypeVar("P", timeseries.Panel, stat.Panel, table.Panel, bargauge.Panel)


def datasource() -> models.DataSourceRef:
    return models.DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)


def query(expr: str, legend: str = "") -> prometheus.Dataquery:
    # `metric{}` is what an empty selector leaves behind; drop the braces for readability.
    return prometheus.Dataquery().expr(expr.replace("{}", "")).legend_format(legend).datasource(datasource())


def instant_table(expr: str) -> prometheus.Dataquery:
    """A query for a table: the latest value of each series, one row per series, labels as columns."""
    return query(expr).instant().format(PromQueryFormat.TABLE)


def with_queries(
    panel: P, title: str, queries: Sequence[prometheus.Dataquery], *, unit: str, description: str, width: int
) -> P:
    """What every panel shares: title, size, the provisioned datasource, queries with refIds A, B, ..."""
    panel = panel.title(title).datasource(datasource()).unit(unit).span(width).height(PANEL_HEIGHT)
    if description:
        panel = panel.description(description)
    for i, target in enumerate(queries):
        panel = panel.with_target(target.ref_id(chr(ord("A") + i)))
    return panel


def graph(
    title: str, queries: Sequence[prometheus.Dataquery], unit: str = "short", description: str = "", width: int = 8
) -> timeseries.Panel:
    legend = (
        common_builders.VizLegendOptions()
        .display_mode(common.LegendDisplayMode.LIST)
        .placement(common.LegendPlacement.BOTTOM)
        .show_legend(True)
    )
    tooltip = common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.SINGLE).sort(common.SortOrder.NONE)
    panel = timeseries.Panel().legend(legend).tooltip(tooltip)
    return with_queries(panel, title, queries, unit=unit, description=description, width=width)


def single_stat(
    title: str,
    queries: Sequence[prometheus.Dataquery],
    unit: str = "short",
    description: str = "",
    width: int = 8,
    mappings: Sequence[models.ValueMapping] = (),
) -> stat.Panel:
    panel = (
        stat.Panel()
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
        .color_mode(common.BigValueColorMode.BACKGROUND)
    )
    if mappings:
        panel = panel.mappings(list(mappings))
    return with_queries(panel, title, queries, unit=unit, description=description, width=width)


def value_map(options: dict[str, tuple[str, str]]) -> models.ValueMap:
    """Value -> (text, colour)."""
    return models.ValueMap({value: models.ValueMappingResult(text=t, color=c) for value, (t, c) in options.items()})


STATE_MAPPINGS = [value_map({"0": ("closed", "green"), "1": ("half-open", "orange"), "2": ("open", "red")})]
UP_MAPPINGS = [value_map({"0": ("down", "red"), "1": ("up", "green")})]


@dataclass(frozen=True)
class Row:
    title: str
    panels: list[PanelBuilder]


def quantiles(
    metric: str, by: str, selector: str, qs: tuple[float, ...] = (0.5, 0.95, 0.99)
) -> list[prometheus.Dataquery]:
    """histogram_quantile queries for a histogram, one per quantile."""
    return [
        query(
            f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{selector}}}[$__rate_interval])))",
            f"p{int(q * 100)} {{{{{by.split(',')[0].strip()}}}}}",
        )
        for q in qs
    ]


def ratio(metric: str, good: str, by: str, selector: str, window: str) -> str:
    """good/total per `by`, kept at 0 (not missing) when no good sample exists yet."""
    sel = f"{selector}, {good}" if selector else good
    total = f"sum by ({by}) (increase({metric}{{{selector}}}[{window}]))"
    return f"(sum by ({by}) (increase({metric}{{{sel}}}[{window}])) or {total} * 0) / {total}"


def traffic_panels(sel: str, by: str) -> list[PanelBuilder]:
    return [
        graph(
            "Requests per second by outcome",
            [
                query(
                    f"sum by ({by}, outcome) (rate(gateway_llm_requests_total{{{sel}}}[$__rate_interval]))",
                    f"{{{{{by}}}}} {{{{outcome}}}}",
                )
            ],
            unit="reqps",
        ),
        graph(
            "Server error ratio",
            [query(ratio("gateway_llm_requests_total", SERVER_ERRORS, by, sel, "$__rate_interval"), f"{{{{{by}}}}}")],
            unit="percentunit",
            description="backend_error, timeout and unavailable outcomes over all requests",
        ),
        graph(
            "Requests in flight",
            [query(f"sum by (model, backend) (gateway_requests_in_flight{{{sel}}})", "{{model}} @ {{backend}}")],
        ),
    ]


def latency_panels(sel: str, model_sel: str) -> list[PanelBuilder]:
    return [
        graph("End-to-end latency", quantiles("gateway_e2e_request_latency_seconds", "model", sel), unit="s"),
        graph(
            "Time to first token (streamed)", quantiles("gateway_time_to_first_token_seconds", "model", sel), unit="s"
        ),
        graph(
            "Gateway overhead (outside the backend call)",
            quantiles("gateway_overhead_seconds", "model", model_sel),
            unit="s",
        ),
        graph(
            "Output tokens per second (throughput)",
            [query(f"sum by (model) (rate(gateway_generation_tokens_total{{{sel}}}[$__rate_interval]))", "{{model}}")],
        ),
        graph(
            "Decode speed per request (median, tokens/s)",
            [
                query(
                    "1 / histogram_quantile(0.5, sum by (model, le) "
                    f"(rate(gateway_time_per_output_token_seconds_bucket{{{sel}}}[$__rate_interval])))",
                    "{{model}}",
                )
            ],
        ),
        graph(
            "HTTP latency p95 by route",
            [
                query(
                    "histogram_quantile(0.95, sum by (handler, le) "
                    "(rate(http_request_duration_seconds_bucket[$__rate_interval])))",
                    "{{handler}}",
                )
            ],
            unit="s",
        ),
    ]


def cache_and_limit_panels(model_sel: str) -> list[PanelBuilder]:
    return [
        graph(
            "Cache hit ratio",
            [
                query(
                    ratio("gateway_cache_requests_total", 'result="hit"', "model", model_sel, "$__rate_interval"),
                    "{{model}}",
                )
            ],
            unit="percentunit",
        ),
        graph(
            "Cache lookups by result",
            [
                query(
                    f"sum by (result) (rate(gateway_cache_requests_total{{{model_sel}}}[$__rate_interval]))",
                    "{{result}}",
                )
            ],
            unit="reqps",
        ),
        graph(
            "Rate-limited requests by limit",
            [query("sum by (kind) (rate(gateway_rate_limited_total[$__rate_interval]))", "{{kind}}")],
            unit="reqps",
        ),
    ]


def backend_panels(backend_sel: str, model_sel: str) -> list[PanelBuilder]:
    return [
        single_stat(
            "Circuit state (worst replica)",
            [query(f"max by (backend) (gateway_circuit_state{{{backend_sel}}})", "{{backend}}")],
            mappings=STATE_MAPPINGS,
        ),
        single_stat(
            "Backend reachable (any replica)",
            [query(f"max by (backend) (gateway_backend_up{{{backend_sel}}})", "{{backend}}")],
            mappings=UP_MAPPINGS,
        ),
        graph(
            "Retries and failovers",
            [
                query(
                    f"sum by (model) (rate(gateway_retries_total{{{model_sel}}}[$__rate_interval]))",
                    "retries {{model}}",
                ),
                query(
                    f"sum by (model) (rate(gateway_failovers_total{{{model_sel}}}[$__rate_interval]))",
                    "failovers {{model}}",
                ),
            ],
            unit="reqps",
        ),
    ]


def platform_panels() -> list[PanelBuilder]:
    return [
        single_stat(
            "Scrape targets up",
            [query("up", "{{job}} {{instance}}")],
            description="gateway replicas, nginx and Redis exporters, Prometheus itself",
            width=12,
            mappings=UP_MAPPINGS,
        ),
        graph(
            "Redis failures seen by gateways",
            [query("sum by (operation) (rate(gateway_redis_errors_total[$__rate_interval]))", "{{operation}}")],
            unit="ops",
            width=12,
        ),
    ]


def cost_panels(model_sel: str) -> list[PanelBuilder]:
    tokens = (
        f"(sum(rate(gateway_prompt_tokens_total{{{model_sel}}}[1h])) "
        f"+ sum(rate(gateway_generation_tokens_total{{{model_sel}}}[1h])))"
    )
    hosted = f"sum(rate(gateway_hosted_api_cost_usd_total{{{model_sel}}}[1h]))"
    return [
        graph(
            "Tokens per second (input and output)",
            [
                query(
                    f"sum by (model) (rate(gateway_prompt_tokens_total{{{model_sel}}}[$__rate_interval]))",
                    "input {{model}}",
                ),
                query(
                    f"sum by (model) (rate(gateway_generation_tokens_total{{{model_sel}}}[$__rate_interval]))",
                    "output {{model}}",
                ),
            ],
        ),
        graph(
            "Monthly cost: hosted API equivalent vs own GPU (break-even)",
            [
                query(f"{hosted} * {SECONDS_PER_MONTH}", "hosted API, projected per month"),
                query("max(gateway_gpu_monthly_cost_usd)", "GPU box per month (break-even)"),
            ],
            unit="currencyUSD",
            description="What this month's traffic (at the last hour's rate) would cost on a hosted API, "
            "against the configured monthly cost of the GPU box. Above the line, self-hosting pays.",
        ),
        graph(
            "Tokens per month: served vs break-even",
            [
                query(f"{tokens} * {SECONDS_PER_MONTH}", "tokens served, projected per month"),
                query(f"max(gateway_gpu_monthly_cost_usd) / ({hosted} / {tokens})", "break-even tokens per month"),
            ],
            description="Tokens a month at the last hour's rate, and the monthly tokens at which the hosted "
            "API would cost as much as the GPU box.",
        ),
        single_stat(
            "Hosted-API cost of the tokens served (range)",
            [
                query(
                    f"sum by (model) (increase(gateway_hosted_api_cost_usd_total{{{model_sel}}}[$__range]))",
                    "{{model}}",
                )
            ],
            unit="currencyUSD",
        ),
    ]


def quality_panels(model_sel: str) -> list[PanelBuilder]:
    return [
        single_stat(
            "Feedback votes (range)",
            [
                query(
                    f"sum by (model, rating) (increase(gateway_feedback_total{{{model_sel}}}[$__range]))",
                    "{{model}} {{rating}}",
                )
            ],
        ),
        graph(
            "Satisfaction (thumbs-up share, 1h)",
            [query(ratio("gateway_feedback_total", 'rating="up"', "model", model_sel, "1h"), "{{model}}")],
            unit="percentunit",
        ),
        graph(
            "JSON format compliance (valid share, 30m)",
            [query(ratio("gateway_format_compliance_total", 'result="valid"', "model", model_sel, "30m"), "{{model}}")],
            unit="percentunit",
        ),
    ]


def organize(hide: Sequence[str], order: Sequence[str], rename: dict[str, str]) -> models.DataTransformerConfig:
    """Grafana's "organize fields" transformation: hide columns, put the others in order, rename some."""
    return models.DataTransformerConfig(
        id_val="organize",
        options={
            "excludeByName": dict.fromkeys(hide, True),
            "indexByName": {name: i for i, name in enumerate(order)},
            "renameByName": rename,
        },
    )


def alert_panels() -> list[PanelBuilder]:
    """What is firing now, how close each key is to its monthly budget, and firing alerts over time."""
    # The labels that say what fired: the model or backend of the gateway's alerts, the key (id, name and
    # owner) of a budget alert; the rest of an alert's labels follow these columns.
    columns = ["alertname", "severity", "model", "backend", "name", "owner", "key"]
    firing = with_queries(
        table.Panel()
        .with_transformation(
            organize(
                hide=["Time", "Value", "__name__", "alertstate"],
                order=columns,
                rename={"alertname": "alert", "name": "key name", "owner": "owner/team", "key": "key id"},
            )
        )
        .sort_by([common_builders.TableSortByFieldState().display_name("severity")])
        .no_value("no alert firing"),
        "Firing alerts",
        [instant_table(FIRING)],
        unit="short",
        description="Every alert Prometheus has firing now (pending ones are left out), with the labels "
        "that say what fired",
        width=12,
    )
    budget_thresholds = (
        dashboard_builders.ThresholdsConfig()
        .mode(models.ThresholdsMode.ABSOLUTE)
        .steps(
            [
                models.Threshold(value=None, color="green"),
                models.Threshold(value=0.8, color="yellow"),
                models.Threshold(value=0.95, color="orange"),
                models.Threshold(value=1.0, color="red"),
            ]
        )
    )
    budget = with_queries(
        bargauge.Panel()
        .display_mode(common.BarGaugeDisplayMode.GRADIENT)
        .orientation(common.VizOrientation.HORIZONTAL)
        .show_unfilled(True)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
        .min(0)
        .max(1)
        .thresholds(budget_thresholds)
        .color_scheme(dashboard_builders.FieldColor().mode(models.FieldColorModeId.THRESHOLDS))
        .no_value("no key has a budget"),
        "Budget used this month by key",
        [query(f"sort_desc(max by (key, name, owner) ({BUDGET_USED}))", "{{name}} ({{owner}})").instant()],
        unit="percentunit",
        description="Share of its monthly budget each key has spent, most spent first; yellow from 80 %, "
        "orange from 95 %, red once the budget is spent (100 %)",
        width=6,
    )
    by_severity = graph(
        "Firing alerts by severity",
        [query(f"count by (severity) ({FIRING})", "{{severity}}")],
        width=6,
    )
    return [firing, budget, by_severity]


def label_values_variable(name: str, label: str, label_query: str, *, multi: bool) -> dashboard_builders.QueryVariable:
    """A variable over the values of a label; multi-valued ones start at "All"."""
    variable = (
        QueryVariable(name)
        .definition(label_query)
        .label(label)
        .datasource(datasource())
        .query({"query": label_query, "refId": f"{name}-variable"})
        .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(models.VariableSort.ALPHABETICAL_ASC)
        .multi(multi)
        .include_all(multi)
    )
    if multi:
        variable = variable.current(models.VariableOption(text="All", value="$__all"))
    return variable


class DefinedVariableModel(models.VariableModel):
    """A query variable with the `definition` Grafana's variable list shows (the SDK's model has none)."""

    definition: str | None = None

    def to_json(self) -> dict[str, object]:
        payload = super().to_json()
        if self.definition is not None:
            payload["definition"] = self.definition
        return payload


class QueryVariable(dashboard_builders.QueryVariable):
    _internal: DefinedVariableModel

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._internal = DefinedVariableModel(type_val=models.VariableType.QUERY, name=name)

    def definition(self, definition: str) -> Self:
        self._internal.definition = definition
        return self


class PrometheusAnnotationModel(models.AnnotationQuery):
    """An annotation from a Prometheus query. Grafana's annotation schema leaves datasource fields open and
    the SDK's model has none of Prometheus': the series' labels to title, text and tags, and the step."""

    step: str | None = None
    title_format: str | None = None
    text_format: str | None = None
    tag_keys: str | None = None
    use_value_for_time: bool | None = None

    def to_json(self) -> dict[str, object]:
        payload = super().to_json()
        extra = {
            "step": self.step,
            "titleFormat": self.title_format,
            "textFormat": self.text_format,
            "tagKeys": self.tag_keys,
            "useValueForTime": self.use_value_for_time,
        }
        payload.update({key: value for key, value in extra.items() if value is not None})
        return payload


class PrometheusAnnotation(dashboard_builders.AnnotationQuery):
    _internal: PrometheusAnnotationModel

    def __init__(self) -> None:
        super().__init__()
        self._internal = PrometheusAnnotationModel()

    def step(self, step: str) -> Self:
        self._internal.step = step
        return self

    def title_format(self, title_format: str) -> Self:
        self._internal.title_format = title_format
        return self

    def text_format(self, text_format: str) -> Self:
        self._internal.text_format = text_format
        return self

    def tag_keys(self, tag_keys: Sequence[str]) -> Self:
        self._internal.tag_keys = ",".join(tag_keys)
        return self

    def use_value_for_time(self, use_value_for_time: bool) -> Self:
        self._internal.use_value_for_time = use_value_for_time
        return self


def dashboard(
    uid: str,
    title: str,
    rows: list[Row],
    variables: Sequence[Builder[models.VariableModel]] = (),
    annotations: Sequence[Builder[models.AnnotationQuery]] = (),
) -> models.Dashboard:
    """Rows open (not collapsed), each followed by its panels, laid out left to right on Grafana's
    24-column grid and wrapping; panel ids count up from 1 in that order."""
    board = (
        dashboard_builders.Dashboard(title)
        .uid(uid)
        .tags(["slm-stack"])
        .timezone("browser")
        .readonly()
        .refresh("30s")
        .time("now-6h", "now")
        .variables(list(variables))
        .annotations(list(annotations))
    )
    for row in rows:
        board = board.with_row(dashboard_builders.Row(row.title))
        for panel in row.panels:
            board = board.with_panel(panel)
    built = board.build()
    for panel_id, laid_out in enumerate(built.panels or [], start=1):
        laid_out.id_val = panel_id
    return built


def overview() -> models.Dashboard:
    return dashboard(
        "slm-overview",
        "SLM stack: overview",
        [
            Row(ALERTS_ROW, alert_panels()),
            Row("Traffic", traffic_panels("", "model")),
            Row("Latency", latency_panels("", "")),
            Row("Cache and rate limits", cache_and_limit_panels("")),
            Row("Backends", backend_panels("", "")),
            Row("Platform", platform_panels()),
            Row("Usage and cost", cost_panels("")),
            Row("Quality", quality_panels("")),
        ],
    )


def per_model() -> models.Dashboard:
    sel, model_sel, backend_sel = 'model=~"$model", backend=~"$backend"', 'model=~"$model"', 'backend=~"$backend"'
    return dashboard(
        "slm-model",
        "SLM stack: per model",
        [
            Row("Traffic", traffic_panels(sel, "backend")),
            Row("Latency", latency_panels(sel, model_sel)),
            Row("Cache", cache_and_limit_panels(model_sel)[:2]),
            Row("Backends", backend_panels(backend_sel, model_sel)),
            Row("Usage and cost", cost_panels(model_sel)),
            Row("Quality", quality_panels(model_sel)),
        ],
        [
            label_values_variable("model", "Model", "label_values(gateway_llm_requests_total, model)", multi=True),
            label_values_variable(
                "backend", "Backend", 'label_values(gateway_llm_requests_total{model=~"$model"}, backend)', multi=True
            ),
        ],
    )


# A replica's rollback counter for a route is born at 1, and increase() cannot see a series' first
# sample: the second term catches series born in the window (as the alert in prometheus/rules does).
ROLLBACKS_IN = (
    "sum by (route, reason) (increase(gateway_rollbacks_total{{{sel}}}[{w}])) > 0 or "
    "sum by (route, reason) (gateway_rollbacks_total{{{sel}}} unless gateway_rollbacks_total{{{sel}}} "
    "offset {w}) > 0"
)


def share_of(metric: str, by: str, part: str, sel: str, window: str) -> str:
    """Each `part` value's share of `metric` within its `by` group (e.g. each variant's share of a route)."""
    return (
        f"sum by ({by}, {part}) (increase({metric}{{{sel}}}[{window}])) / ignoring ({part}) group_left "
        f"sum by ({by}) (increase({metric}{{{sel}}}[{window}]))"
    )


def rollout_rows(sel: str, route_sel: str) -> list[Row]:
    by = "model, variant"  # model is the route's name on routed requests
    return [
        Row(
            "Variants side by side",
            [
                graph(
                    "Traffic share by variant",
                    [
                        query(
                            share_of("gateway_llm_requests_total", "model", "variant", sel, "$__rate_interval"),
                            "{{variant}}",
                        )
                    ],
                    unit="percentunit",
                    description="Each variant's share of the route's requests; compare with the configured "
                    "weights next to it",
                ),
                graph(
                    "Configured weight by variant (%)",
                    [query(f"max by (route, variant) (gateway_route_weight{{{route_sel}}})", "{{variant}}")],
                    unit="percent",
                    description="The route's current weights; steps and rollbacks show as jumps",
                ),
                single_stat(
                    "Rollbacks (since the gateways started)",
                    [query(f"sum by (route, reason) (gateway_rollbacks_total{{{route_sel}}})", "{{route}} {{reason}}")],
                    description="Canaries rolled back by the guard, by the signal that breached; each one is "
                    "also an annotation on the graphs",
                ),
                graph(
                    "Server error ratio by variant",
                    [
                        query(
                            ratio("gateway_llm_requests_total", SERVER_ERRORS, by, sel, "$__rate_interval"),
                            "{{variant}}",
                        )
                    ],
                    unit="percentunit",
                ),
                graph(
                    "Time to first token p95 by variant",
                    quantiles("gateway_time_to_first_token_seconds", "variant", sel, (0.95,)),
                    unit="s",
                ),
                graph(
                    "Output tokens per second by variant",
                    [
                        query(
                            f"sum by (variant) (rate(gateway_generation_tokens_total{{{sel}}}[$__rate_interval]))",
                            "{{variant}}",
                        )
                    ],
                ),
            ],
        ),
        Row(
            "Quality by variant",
            [
                graph(
                    "JSON format compliance by variant (valid share, 5m)",
                    [query(ratio("gateway_format_compliance_total", 'result="valid"', by, sel, "5m"), "{{variant}}")],
                    unit="percentunit",
                    width=12,
                ),
                graph(
                    "Feedback by variant (thumbs up/down share, 1h)",
                    [
                        query(
                            share_of("gateway_feedback_total", "model, variant", "rating", sel, "1h"),
                            "{{variant}} {{rating}}",
                        )
                    ],
                    unit="percentunit",
                    width=12,
                ),
            ],
        ),
    ]


def rollouts() -> models.Dashboard:
    sel, route_sel = 'model=~"$route"', 'route=~"$route"'
    route = label_values_variable("route", "Route", "label_values(gateway_route_weight, route)", multi=False)
    rollbacks = (
        PrometheusAnnotation()
        .name("Rollbacks")
        .datasource(datasource())
        .enable(True)
        .icon_color("red")
        .expr(ROLLBACKS_IN.format(sel=route_sel, w="1m"))
        .step("60s")
        .title_format("Rollback of a canary on {{route}}")
        .text_format("breached: {{reason}}")
        .tag_keys(["route", "reason"])
        .use_value_for_time(False)
    )
    return dashboard("slm-rollouts", "SLM stack: rollouts", rollout_rows(sel, route_sel), [route], [rollbacks])


DASHBOARDS: dict[str, Callable[[], models.Dashboard]] = {
    "overview.json": overview,
    "per-model.json": per_model,
    "rollouts.json": rollouts,
}


def render_all() -> dict[str, str]:
    """File name -> JSON text, exactly as committed."""
    return {name: json.dumps(build(), cls=JSONEncoder, indent=2) + "\n" for name, build in DASHBOARDS.items()}


if __name__ == "__main__":
    DASHBOARD_DIR.mkdir(exist_ok=True)
    for name, text in render_all().items():
        (DASHBOARD_DIR / name).write_text(text)
        print(f"wrote {DASHBOARD_DIR / name}")
