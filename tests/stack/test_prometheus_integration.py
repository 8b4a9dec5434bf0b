"""A real Prometheus (the shipped config, targets rendered for loopback) scrapes two real gateway
processes in front of the Ollama double while traffic flows; then every PromQL expression of every
dashboard panel and every rule must parse, and every panel query must return data.

A dashboard that names a metric the gateway does not export fails here.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import yaml
from openai import OpenAI

from testkit.ollama import OllamaDoubleControl, running_ollama_double
from testkit.processes import Service, free_port, python_service, wait_until
from tests.support.grafana import (
    PanelQuery,
    alert_row_queries,
    load_dashboards,
    panel_queries,
    substitute,
    variables,
)
from tests.support.prometheus import PROMETHEUS_DIR, PrometheusAPI, prometheus_service, render_config, write_config

ADMIN_KEY = "sk-prometheus-integration-0123456789"
MODELS = ("smollm2:135m", "llama3.2:1b")
# A route over the double's two models, for the Rollouts dashboard: set up as one split, changed to
# another, then rolled back by hand (gateway_rollbacks_total{reason="manual"}) as the dashboard test
# starts. No guard, so the weights stay put while the queries run.
ROUTE = "rollout-demo"
ROUTE_BEFORE = {"variants": [{"model": MODELS[0], "weight": 50}, {"model": MODELS[1], "weight": 50}]}
ROUTE_AFTER = {"variants": [{"model": MODELS[0], "weight": 70}, {"model": MODELS[1], "weight": 30}]}
METRIC_NAME = re.compile(r"\b((?:gateway|http)_[a-z0-9_]+?)(?:_bucket|_count|_sum)?\b")


def exports(text: str, metric: str) -> bool:
    """Whether a /metrics text declares `metric` (its # TYPE line) or has samples of it."""
    return re.search(rf"^(?:# TYPE {metric} |{metric}(?:_bucket|_count|_sum)?[{{ ])", text, re.MULTILINE) is not None


@dataclass
class Stack:
    gateways: list[Service]
    prometheus: PrometheusAPI
    double: OllamaDoubleControl

    def exported(self) -> str:
        return httpx.get(self.gateways[0].url + "/metrics", timeout=5).text


def start_gateway(double_url: str) -> Service:
    port = free_port()
    backends = [{"kind": "ollama", "url": double_url, "name": name} for name in ("ollama-a", "ollama-b")]
    env = {
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "GATEWAY_BACKENDS": json.dumps(backends),
        "GATEWAY_ADMIN_KEY": ADMIN_KEY,
        "GATEWAY_BREAKER_FAILURES": "1000",
        "GATEWAY_LOG_LEVEL": "warning",
    }
    return python_service("gateway", ["-m", "gateway"], port, env).start().wait_http("/healthz")


def admin(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)


def roll_out(url: str) -> None:
    """Two changes to the route on one replica (each replica keeps its own routes without Redis)."""
    for spec in (ROUTE_BEFORE, ROUTE_AFTER):
        put = admin(url).put(f"/admin/routes/{ROUTE}", json=spec)
        assert put.status_code == 200, put.text


def roll_back(url: str) -> None:
    back = admin(url).post(f"/admin/routes/{ROUTE}/rollback")
    assert back.status_code == 200, back.text
    assert [v["weight"] for v in back.json()["variants"]] == [50, 50]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_ollama_double(models=MODELS, tokens=6) as double:
        gateways: list[Service] = []
        prometheus: Service | None = None
        try:
            gateways = [start_gateway(double.url) for _ in range(2)]
            port = free_port()
            config = render_config(gateway_targets=[f"127.0.0.1:{g.port}" for g in gateways], self_port=port)
            path = write_config(tmp_path_factory.mktemp("prometheus"), config)
            prometheus = prometheus_service(path, port).start().wait_http("/-/ready")
            for gateway in gateways:
                roll_out(gateway.url)
            yield Stack(gateways, PrometheusAPI(prometheus.url), OllamaDoubleControl(double.url))
        finally:
            for service in [*gateways, *([prometheus] if prometheus else [])]:
                service.stop()


class Traffic:
    """Keeps every kind of request flowing through both gateways until stopped, so rate() windows
    hold samples whenever a query runs."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.rounds = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                for gateway in self.stack.gateways:
                    self._round(gateway.url)
                self.rounds += 1
        except BaseException as exc:  # surfaced by the test, not lost in the thread
            self.errors.append(exc)

    def _round(self, url: str) -> None:
        client = OpenAI(base_url=url + "/v1", api_key=ADMIN_KEY, max_retries=0)
        messages = [{"role": "user", "content": "hello"}]
        for model in MODELS:
            rid = f"it-{uuid.uuid4().hex[:12]}"
            client.chat.completions.create(
                model=model, messages=messages, max_tokens=6, extra_headers={"X-Request-ID": rid}
            )
            stream = client.chat.completions.create(
                model=model, messages=messages, max_tokens=6, stream=True, stream_options={"include_usage": True}
            )
            assert [chunk for chunk in stream]
            client.chat.completions.create(
                model=model, messages=messages, max_tokens=6, response_format={"type": "json_object"}
            )
            client.completions.create(model=model, prompt="once upon", max_tokens=4)
            vote = httpx.post(
                url + "/v1/feedback",
                json={"request_id": rid, "rating": "up" if self.rounds % 3 else "down"},
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                timeout=10,
            )
            assert vote.status_code == 201, vote.text
        self._routed_round(client, url)
        # one failover (first replica fails, the second answers) and one request no replica can serve
        self.stack.double.set(fail_next=1)
        client.chat.completions.create(model=MODELS[0], messages=messages, max_tokens=4)
        self.stack.double.set(fail_next=2)
        try:
            client.chat.completions.create(model=MODELS[0], messages=messages, max_tokens=4)
        except Exception:
            pass  # the 5xx is the point
        self.stack.double.set(fail_next=0)

    def _routed_round(self, client: OpenAI, url: str) -> None:
        """Requests to the route from several users (sticky: each user keeps a variant), with votes."""
        messages = [{"role": "user", "content": "hello"}]
        for n in range(4):
            user, rid = f"user-{self.rounds % 8}-{n}", f"it-route-{uuid.uuid4().hex[:12]}"
            stream = client.chat.completions.create(
                model=ROUTE,
                messages=messages,
                max_tokens=6,
                stream=True,
                user=user,
                stream_options={"include_usage": True},
            )
            assert [chunk for chunk in stream]
            answer = client.chat.completions.with_raw_response.create(
                model=ROUTE,
                messages=messages,
                max_tokens=6,
                user=user,
                response_format={"type": "json_object"},
                extra_headers={"X-Request-ID": rid},
            )
            assert answer.headers["X-Model-Variant"] in MODELS
            vote = httpx.post(
                url + "/v1/feedback",
                json={"request_id": rid, "rating": "up" if n % 2 else "down"},
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                timeout=10,
            )
            assert vote.status_code == 201, vote.text


def annotation_queries(boards: dict[str, dict]) -> list[PanelQuery]:
    return [
        PanelQuery(name, f"annotation {a['name']}", a["expr"])
        for name, board in boards.items()
        for a in board["annotations"]["list"]
        if "expr" in a
    ]


def has_number(body: dict) -> bool:
    for series in body["data"]["result"]:
        value = series["value"][1] if "value" in series else None
        if value is not None and not math.isnan(float(value)):
            return True
    return False


def variable_values(stack: Stack, board: dict) -> dict[str, str]:
    """Each variable set to "All" as Grafana sends it to a regex matcher: (a|b), regex-escaped."""
    values: dict[str, str] = {}
    for name, query in variables(board).items():
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert match, f"variable {name}: unsupported query {query}"
        label, selector = match.group(2), substitute(match.group(1), values)
        wait_until(
            lambda label=label, selector=selector: bool(stack.prometheus.label_values(label, selector)),
            timeout=30,
            what=f"values of dashboard variable {name} ({query})",
        )
        found = stack.prometheus.label_values(label, selector)
        # Grafana escapes regex characters, then doubles the backslash for the PromQL string literal.
        values[name] = "(" + "|".join(re.escape(v).replace("\\", "\\\\") for v in found) + ")"
    return values


def metrics_in(expr: str) -> set[str]:
    return {m for m in METRIC_NAME.findall(expr)}


def test_every_gateway_replica_is_scraped(stack: Stack) -> None:
    wait_until(
        lambda: float(stack.prometheus.query('count(up{job="gateway"} == 1)')["data"]["result"][0]["value"][1]) == 2,
        timeout=30,
        what="both gateway replicas scraped",
    )
    instances = {t["labels"]["instance"] for t in stack.prometheus.targets() if t["labels"]["job"] == "gateway"}
    assert instances == {f"127.0.0.1:{g.port}" for g in stack.gateways}


def test_every_dashboard_query_parses_and_returns_data(stack: Stack) -> None:
    boards = load_dashboards()
    exported = stack.exported()
    # The Alerts row has data only while an alert fires or a key has a budget: none here.
    # They must still parse (checked below with the others).
    alerts = alert_row_queries(boards)
    queries = [q for q in panel_queries(boards) if q not in alerts]
    queries += annotation_queries(boards)  # the rollback annotation must find this rollback
    assert len(queries) > 20
    for gateway in stack.gateways:
        roll_back(gateway.url)
    with Traffic(stack) as traffic:
        wait_until(lambda: traffic.rounds >= 1 or bool(traffic.errors), timeout=60, what="first round of traffic")
        assert not traffic.errors, traffic.errors
        values = {name: variable_values(stack, board) for name, board in boards.items()}
        deadline = time.monotonic() + 45
        missing = list(queries)
        while missing and time.monotonic() < deadline:
            missing = [
                q for q in missing if not has_number(stack.prometheus.query(substitute(q.expr, values[q.dashboard])))
            ]
            assert not traffic.errors, traffic.errors
        for query in [*queries, *alerts]:
            body = stack.prometheus.query(substitute(query.expr, values[query.dashboard]))
            assert body["status"] == "success", f"{query}: {body.get('error')}"
    assert not missing, "panels without data:\n" + "\n".join(map(str, missing))
    for metric in {m for q in queries for m in metrics_in(q.expr)}:
        assert exports(exported, metric), f"dashboards use {metric}, which the gateway does not export"


def test_every_rule_expression_parses_and_evaluates(stack: Stack) -> None:
    rules = [
        rule
        for path in sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]
    for rule in rules:
        body = stack.prometheus.query(rule["expr"])
        assert body["status"] == "success", f"{rule.get('alert') or rule.get('record')}: {body.get('error')}"
    wait_until(
        lambda: all(r.get("lastEvaluation", "0001").startswith("20") for r in stack.prometheus.rules()),
        timeout=30,
        what="every rule evaluated once",
    )
    loaded = stack.prometheus.rules()
    assert len(loaded) == len(rules)
    assert all(r["health"] == "ok" for r in loaded), [(r["name"], r.get("lastError")) for r in loaded]


def test_recording_rules_produce_series_for_live_traffic(stack: Stack) -> None:
    with Traffic(stack) as traffic:
        wait_until(
            lambda: has_number(stack.prometheus.query("model:gateway_e2e_request_latency_seconds:p95_5m")),
            timeout=45,
            what="recorded p95 latency",
        )
        wait_until(
            lambda: has_number(stack.prometheus.query("model:gateway_llm_error_ratio:rate5m")),
            timeout=45,
            what="recorded error ratio",
        )
    assert not traffic.errors, traffic.errors
    models = {
        s["metric"]["model"] for s in stack.prometheus.query("model:gateway_llm_error_ratio:rate5m")["data"]["result"]
    }
    assert models == {*MODELS, ROUTE}  # a routed request counts under the route's name
