"""gateway_key_budget_used_ratio: the share of its month's budget each key with a budget has used, bounded,
with the alert thresholds from the settings, read by a real gateway from a real Redis."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest

from testkit.processes import wait_until
from tests.support.policy_stack import ADMIN_KEY, PolicyStack, chat_body

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
SERIES = re.compile(
    r'^gateway_key_budget_used_ratio\{key="([^"]+)",month="([^"]+)",name="([^"]+)",owner="([^"]*)"\} (\S+)$'
)


@pytest.fixture(scope="module")
def stack() -> Iterator[PolicyStack]:
    stack = PolicyStack.start(
        GATEWAY_BUDGET_METRIC_INTERVAL_S="0.2",
        GATEWAY_BUDGET_METRIC_MAX_KEYS="3",
        GATEWAY_BUDGET_WARNING_RATIO="0.7",
        GATEWAY_BUDGET_CRITICAL_RATIO="0.9",
    )
    yield stack
    stack.stop()


def exported(stack: PolicyStack) -> tuple[dict[str, tuple[str, str, str, float]], str]:
    text = httpx.get(f"{stack.url}/metrics", timeout=10).text
    rows = {}
    for line in text.splitlines():
        if found := SERIES.match(line):
            key, month, name, owner, value = found.groups()
            rows[key] = (name, owner, month, float(value))
    return rows, text


def make_key(stack: PolicyStack, **spec: object) -> tuple[str, str]:
    made = httpx.post(f"{stack.url}/admin/keys", json=spec, headers=ADMIN, timeout=10)
    assert made.status_code == 201, made.text
    return made.json()["id"], made.json()["key"]


def chat(stack: PolicyStack, key: str, max_tokens: int = 8) -> httpx.Response:
    return httpx.post(
        f"{stack.url}/v1/chat/completions",
        json=chat_body(max_tokens=max_tokens),
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_a_keys_share_grows_with_its_use_and_reads_one_once_refused(stack: PolicyStack) -> None:
    key_id, key = make_key(stack, name="team-bot", owner="search", monthly_token_budget=120)
    unlimited_id, unlimited = make_key(stack, name="no-budget", owner="search")
    assert chat(stack, unlimited).status_code == 200
    wait_until(lambda: key_id in exported(stack)[0], timeout=5, what="the budgeted key exported at 0")
    assert exported(stack)[0][key_id] == ("team-bot", "search", time.strftime("%Y-%m", time.gmtime()), 0.0)
    shares = []
    for _ in range(3):
        assert chat(stack, key).status_code == 200
        wait_until(lambda: exported(stack)[0][key_id][3] > (shares or [0])[-1], timeout=5, what="the share growing")
        shares.append(exported(stack)[0][key_id][3])
    assert 0 < shares[0] < shares[1] < shares[2] < 0.5
    # A request whose reservation does not fit is refused while most of the budget is left: the key is
    # exhausted for what it asks, and the share says so.
    refused = chat(stack, key, max_tokens=500)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "token_budget_exhausted"
    wait_until(lambda: exported(stack)[0][key_id][3] == 1.0, timeout=5, what="the share at 1 after a refusal")
    assert unlimited_id not in exported(stack)[0]  # no budget, no series


def test_the_thresholds_come_from_the_settings(stack: PolicyStack) -> None:
    _, text = exported(stack)
    levels = dict(re.findall(r'^gateway_key_budget_alert_ratio\{level="(\w+)"\} (\S+)$', text, re.MULTILINE))
    assert {k: float(v) for k, v in levels.items()} == {"warning": 0.7, "critical": 0.9, "exhausted": 1.0}


def test_past_the_bound_the_keys_furthest_from_their_budget_are_counted_not_named(stack: PolicyStack) -> None:
    made = [make_key(stack, name=f"bulk-{i}", owner="bulk", monthly_token_budget=100_000 * (i + 1)) for i in range(4)]
    assert chat(stack, made[0][1]).status_code == 200

    def settled() -> bool:
        rows, text = exported(stack)
        unexported = re.search(r"^gateway_key_budget_keys_unexported (\S+)$", text, re.MULTILINE)
        return len(rows) == 3 and unexported is not None and float(unexported.group(1)) >= 1

    wait_until(settled, timeout=5, what="three keys named, the rest counted")
    rows, _ = exported(stack)
    assert made[0][0] in rows  # the one that used some of its budget is among those kept


def test_a_revoked_key_leaves_the_series(stack: PolicyStack) -> None:
    key_id, key = make_key(stack, name="leaving", owner="ops", monthly_token_budget=50)
    assert chat(stack, key).status_code == 200
    wait_until(lambda: key_id in exported(stack)[0], timeout=5, what="the key exported")
    revoked = httpx.delete(f"{stack.url}/admin/keys/{key_id}", headers=ADMIN, timeout=10)
    assert revoked.status_code == 200, revoked.text
    wait_until(lambda: key_id not in exported(stack)[0], timeout=10, what="the revoked key gone from /metrics")
