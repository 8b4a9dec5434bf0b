"""Alerts reach people: a real Prometheus (the shipped config and rules) scrapes a real gateway in front of
two Ollama doubles and sends to a real Alertmanager, configured by the project's renderer from the same
settings compose gives it, which delivers to a webhook receiver this test runs: one path for the
operators, one per team.

Time runs faster for the alerts' `for` durations only (a minute becomes a second: see
tests/support/prometheus.py `minutes_as_seconds`); queries, windows, labels, grouping, routes and
inhibitions are the shipped ones. promtool's unit tests (prometheus/tests/) check the real durations.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from testkit.ollama import OllamaDoubleControl, start_ollama_double
from testkit.processes import Service, free_port, redis_service, wait_until
from tests.support.alerting import (
    AlertmanagerAPI,
    WebhookReceiver,
    alertmanager_service,
    amtool,
    render_alertmanager_config,
)
from tests.support.grafana import alert_row_queries, load_dashboards, substitute
from tests.support.policy_stack import ADMIN_KEY, gateway_env, start_gateway
from tests.support.prometheus import PrometheusAPI, prometheus_service, render_config, write_config

pytestmark = pytest.mark.slow

MODEL = "smollm2:135m"  # on backend a, the one stopped
STABLE, CANARY = "orders:v1", "orders:v2"  # STABLE on a, CANARY on b
GROUP_WAIT_S = 5  # a caused alert waits this long in its group, long enough for its cause to arrive
GROUP_INTERVAL_S = 2
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CAUSED = ("GatewayHighErrorRate", "GatewayHighLatencyP95", "GatewayTTFTRegression", "GatewayCircuitOpen")
BACKEND_DOWN = "GatewayBackendDown"
BUDGET_ALERTS = ("KeyBudgetWarning", "KeyBudgetCritical", "KeyBudgetExhausted")


@dataclass
class AlertStack:
    gateway: Service
    backend_a: Service
    control_b: OllamaDoubleControl
    prometheus: PrometheusAPI
    alertmanager: AlertmanagerAPI
    webhook: WebhookReceiver

    def create_key(self, **spec: Any) -> tuple[str, str]:
        made = httpx.post(f"{self.gateway.url}/admin/keys", json=spec, headers=ADMIN, timeout=10)
        assert made.status_code == 201, made.text
        return made.json()["id"], made.json()["key"]

    def chat(self, key: str, model: str, user: str = "someone", timeout: float = 30) -> httpx.Response:
        body = {"model": model, "user": user, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
        return httpx.post(
            f"{self.gateway.url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=timeout,
        )

    def budget_ratio(self, key_id: str) -> float:
        text = httpx.get(f"{self.gateway.url}/metrics", timeout=10).text
        found = re.search(rf'^gateway_key_budget_used_ratio{{[^}}]*key="{key_id}"[^}}]*}} (\S+)$', text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AlertStack]:
    tmp = tmp_path_factory.mktemp("alerting")
    services: list[Service] = []
    webhook = WebhookReceiver()
    try:
        redis = redis_service().start().wait_port()
        services.append(redis)
        a = start_ollama_double(models=(MODEL, STABLE), tokens=4)
        b = start_ollama_double(models=(CANARY,), tokens=4)
        services += [a, b]

        routes = tmp / "alert-routes"
        routes.write_text(
            "# owner   channel   target\n"
            f"search    webhook   {webhook.url('/team/search')}\n"
            f"support   webhook   {webhook.url('/team/support')}\n"
        )
        config = tmp / "alertmanager" / "alertmanager.yml"
        config.parent.mkdir()
        rendered = render_alertmanager_config(
            {
                "ALERT_WEBHOOK_URL": webhook.url("/operators"),
                "ALERT_ROUTES_FILE": str(routes),
                "ALERT_GROUP_WAIT": f"{GROUP_WAIT_S}s",
                "ALERT_GROUP_INTERVAL": f"{GROUP_INTERVAL_S}s",
            },
            config,
        )
        assert rendered.returncode == 0, rendered.stderr
        checked = amtool("check-config", str(config))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        am_port = free_port()
        alertmanager = alertmanager_service(config, am_port).start().wait_http("/-/ready")
        services.append(alertmanager)

        backends = [{"kind": "ollama", "url": a.url, "name": "a"}, {"kind": "ollama", "url": b.url, "name": "b"}]
        env = gateway_env(
            redis_port=redis.port,
            backend_url=a.url,
            GATEWAY_BACKENDS=json.dumps(backends),
            GATEWAY_DISCOVERY_INTERVAL_S="1",
            GATEWAY_BUDGET_METRIC_INTERVAL_S="0.3",
            GATEWAY_TOTAL_TIMEOUT_S="2",
            GATEWAY_FIRST_TOKEN_TIMEOUT_S="1",
            GATEWAY_BREAKER_RESET_S="0.5",
        )
        gateway = start_gateway(env)
        services.append(gateway)

        prom_port = free_port()
        prom_config = render_config(
            gateway_targets=[f"127.0.0.1:{gateway.port}"], self_port=prom_port, alertmanager=f"127.0.0.1:{am_port}"
        )
        path = write_config(tmp / "prometheus", prom_config, minutes_as_seconds=True)
        prometheus = prometheus_service(path, prom_port).start().wait_http("/-/ready")
        services.append(prometheus)
        yield AlertStack(
            gateway=gateway,
            backend_a=a,
            control_b=OllamaDoubleControl(b.url),
            prometheus=PrometheusAPI(prometheus.url),
            alertmanager=AlertmanagerAPI(alertmanager.url),
            webhook=webhook,
        )
    finally:
        for service in reversed(services):
            if service.proc is not None and service.proc.poll() is None:
                service.proc.send_signal(signal.SIGCONT)  # a stopped double must be able to exit
            service.stop()
        webhook.close()


def firing_in_prometheus(stack: AlertStack, alertname: str) -> list[dict[str, Any]]:
    body = stack.prometheus.query(f'ALERTS{{alertname="{alertname}",alertstate="firing"}}')
    return [series["metric"] for series in body["data"]["result"]]


def test_budget_warnings_reach_the_keys_team_once_per_threshold_and_no_other_team(stack: AlertStack) -> None:
    search_id, search_key = stack.create_key(name="search-bot", owner="search", monthly_token_budget=400)
    support_id, support_key = stack.create_key(name="support-bot", owner="support", monthly_token_budget=100_000)
    assert stack.chat(support_key, MODEL).status_code == 200
    wait_until(lambda: stack.budget_ratio(support_id) > 0, timeout=10, what="the support key's budget share")

    def drive_until(reached: float) -> list[int]:
        statuses = []
        for _ in range(100):
            before = stack.budget_ratio(search_id)
            if before >= reached:
                return statuses
            statuses.append(stack.chat(search_key, MODEL).status_code)
            # each answered or refused request moves the share; wait for /metrics to show it
            wait_until(lambda b=before: stack.budget_ratio(search_id) > b, timeout=10, what="the share moving")
        raise AssertionError(f"the search key never reached {reached}: {stack.budget_ratio(search_id)}")

    arrivals = {}
    for reached, alertname in ((0.8, "KeyBudgetWarning"), (0.95, "KeyBudgetCritical"), (1.0, "KeyBudgetExhausted")):
        statuses = drive_until(reached)
        crossed = time.monotonic()
        if reached == 1.0:
            assert statuses[-1] == 429, statuses  # exhausted: the first refusal
        else:
            assert set(statuses) == {200}, statuses
        wait_until(
            lambda name=alertname: bool(stack.webhook.alerts("/team/search", name)),
            timeout=60,
            what=f"{alertname} at the search team's receiver",
        )
        ((notification, _),) = stack.webhook.alerts("/team/search", alertname)
        arrivals[alertname] = notification.at - crossed
    # The overview's Alerts row has data now: alerts fire and keys have budgets.
    queries = alert_row_queries(load_dashboards())
    assert len(queries) >= 2
    for query in queries:
        result = stack.prometheus.query(substitute(query.expr, {}))
        assert result["status"] == "success" and result["data"]["result"], f"{query}: no data"
    time.sleep(GROUP_WAIT_S + 3 * GROUP_INTERVAL_S)  # room for a repeat or a stray one to arrive

    sent = Counter(a["labels"]["alertname"] for n in stack.webhook.received("/team/search") for a in n.alerts("firing"))
    assert sent == {name: 1 for name in BUDGET_ALERTS}, sent
    for alertname in BUDGET_ALERTS:
        ((_, alert),) = stack.webhook.alerts("/team/search", alertname)
        labels = alert["labels"]
        assert (labels["key"], labels["name"], labels["owner"]) == (search_id, "search-bot", "search")
        assert labels["month"] == time.strftime("%Y-%m", time.gmtime())
        assert "search-bot" in alert["annotations"]["summary"] and "(search)" in alert["annotations"]["summary"]
    assert stack.webhook.received("/team/support") == []
    budget_to_operators = [
        a for n in stack.webhook.received("/operators") for a in n.alerts() if a["labels"].get("category") == "budget"
    ]
    assert budget_to_operators == []
    print(f"\nbudget notifications after the share crossed each threshold: {arrivals}")


def test_a_backend_stopped_under_load_reaches_the_operators_and_the_alerts_it_causes_are_held(
    stack: AlertStack,
) -> None:
    _, key = stack.create_key(name="load", owner="ops")
    stop_load = threading.Event()
    statuses: Counter[int | str] = Counter()

    def load() -> None:
        while not stop_load.is_set():
            try:
                statuses[stack.chat(key, MODEL, timeout=5).status_code] += 1
            except httpx.HTTPError as exc:
                statuses[type(exc).__name__] += 1
            time.sleep(0.05)

    threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: statuses[200] >= 20, timeout=30, what="load flowing")
        pid = stack.backend_a.proc.pid if stack.backend_a.proc else 0
        os.kill(pid, signal.SIGSTOP)  # hung, not gone: connections open, nothing answers
        stopped = time.monotonic()
        wait_until(
            lambda: any(
                a["labels"]["backend"] == "a" for _, a in stack.webhook.alerts("/operators", "GatewayBackendDown")
            ),
            timeout=90,
            what="GatewayBackendDown at the operators' receiver",
        )
        ((down, alert),) = stack.webhook.alerts("/operators", "GatewayBackendDown")
        assert alert["labels"]["severity"] == "critical" and alert["annotations"]["summary"] == "Backend a is down"

        def held() -> list[str]:
            alerts = stack.alertmanager.alerts(inhibited="true", active="false", silenced="false")
            return [a["labels"]["alertname"] for a in alerts if a["status"]["inhibitedBy"]]

        wait_until(lambda: bool(set(held()) & set(CAUSED)), timeout=60, what="an alert the outage causes, held")
        caused_firing = {name for name in CAUSED if firing_in_prometheus(stack, name)}
        time.sleep(GROUP_WAIT_S + 2 * GROUP_INTERVAL_S)  # a caused alert wrongly let through would be here now
        held_names = set(held())
        sent_to_operators = {a["labels"]["alertname"] for n in stack.webhook.received("/operators") for a in n.alerts()}
    finally:
        if stack.backend_a.proc is not None:
            os.kill(stack.backend_a.proc.pid, signal.SIGCONT)
        resumed = time.monotonic()
    try:
        wait_until(
            lambda: bool(stack.webhook.alerts("/operators", "GatewayBackendDown", status="resolved")),
            timeout=90,
            what="the resolved GatewayBackendDown",
        )
        ((back, _),) = stack.webhook.alerts("/operators", "GatewayBackendDown", status="resolved")
    finally:
        stop_load.set()
        for thread in threads:
            thread.join(10)
    assert caused_firing, "the outage caused no latency, error or circuit alert to hold"
    assert caused_firing <= held_names | {n for n in caused_firing if not firing_in_prometheus(stack, n)}
    assert not (sent_to_operators & set(CAUSED)), sent_to_operators
    print(
        f"\nbackend stopped under load ({dict(statuses)}): GatewayBackendDown at the receiver "
        f"{down.at - stopped:.1f} s later (for: 2 s here, group wait {GROUP_WAIT_S} s); "
        f"held by inhibition: {sorted(held_names & set(CAUSED))}; resolved {back.at - resumed:.1f} s after it was back"
    )


def test_a_canary_rolled_back_by_the_guard_reaches_the_operators(stack: AlertStack) -> None:
    guard = {
        "min_requests": 20,
        "max_error_rate_delta": 0.05,
        "max_format_failure_delta": 0.05,
        "max_ttft_p95_ratio": 100,
    }
    route = {"variants": [{"model": STABLE, "weight": 50}, {"model": CANARY, "weight": 50}], "guard": guard}
    put = httpx.put(f"{stack.gateway.url}/admin/routes/orders", json=route, headers=ADMIN, timeout=10)
    assert put.status_code == 200, put.text
    stack.control_b.set(fail_next=100_000, fail_status=500)
    _, key = stack.create_key(name="orders-app", owner="orders")

    def canary_weight() -> int:
        spec = httpx.get(f"{stack.gateway.url}/admin/routes/orders", headers=ADMIN, timeout=10).json()
        return next(v["weight"] for v in spec["variants"] if v["model"] == CANARY)

    for i in range(300):
        stack.chat(key, "orders", user=f"user-{uuid.uuid4().hex[:8]}-{i}")
        if i % 5 == 4 and canary_weight() == 0:
            break
    assert canary_weight() == 0, "the guard did not roll the canary back"
    rolled_back = time.monotonic()
    wait_until(
        lambda: bool(stack.webhook.alerts("/operators", "GatewayCanaryRolledBack")),
        timeout=60,
        what="GatewayCanaryRolledBack at the operators' receiver",
    )
    ((notification, alert),) = stack.webhook.alerts("/operators", "GatewayCanaryRolledBack")
    assert (alert["labels"]["route"], alert["labels"]["reason"]) == ("orders", "error_rate")
    for team in ("/team/search", "/team/support"):
        assert not stack.webhook.alerts(team, "GatewayCanaryRolledBack")
    print(f"\ncanary rollback at the operators' receiver {notification.at - rolled_back:.1f} s after it happened")
