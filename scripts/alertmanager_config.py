#!/usr/bin/env python3
"""Write Alertmanager's configuration from the environment (.env) and the team routes file.

    python3 scripts/alertmanager_config.py --output /config/alertmanager.yml   (compose: alertmanager-config)
    python3 scripts/alertmanager_config.py                                      (print it)

Standard library only: compose runs it in the gateway's image before Alertmanager starts, so the
repository holds no receiver address or password. The output is JSON, which is YAML.

The operators' receiver gets every alert; each channel is off until its setting is there:
  ALERT_WEBHOOK_URL                        a generic webhook (Alertmanager's JSON), e.g. a chat relay
  ALERT_SLACK_WEBHOOK_URL, ALERT_SLACK_CHANNEL   a Slack incoming webhook
  ALERT_EMAIL_TO, ALERT_SMTP_SMARTHOST (host:port), ALERT_SMTP_FROM, ALERT_SMTP_USERNAME,
  ALERT_SMTP_PASSWORD, ALERT_SMTP_REQUIRE_TLS (true)   e-mail
Any of them may be given as NAME_FILE, a file holding the value (compose passes the secret ones so).

Team routes (ALERT_ROUTES_FILE): alerts about a key carry its owner; a line per team channel sends the
alerts of the keys that team owns to it instead of the operators:

    # owner     channel   target
    search      webhook   https://hooks.example.com/alerts/search
    support     slack     https://hooks.slack.com/services/T000/B000/XXXX  #support-alerts
    billing     email     billing-oncall@example.com

Grouping: ALERT_GROUP_WAIT (30s), ALERT_GROUP_INTERVAL (5m), ALERT_REPEAT_INTERVAL (4h). Budget alerts
are grouped per key and threshold and repeat after ALERT_BUDGET_REPEAT_INTERVAL (745h, a month: each
is sent once; Alertmanager must keep its notification log as long, --data.retention). Inhibitions: a
backend down holds the latency, TTFT and error-rate alerts it causes, and its own open circuit; Redis
down holds the gateways' Redis-failure alert and the Redis exporter's scrape alert; a higher budget
level holds the lower ones of the same key and month.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

OPERATORS = "operators"
OPERATORS_BUDGET = "operators-budget"  # the operators' channels without resolved messages (month rollover)
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
OWNER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")
CHANNELS = ("webhook", "slack", "email")

# What a backend or Redis being down causes, so only the cause is sent (rules in prometheus/rules/).
INHIBIT_RULES: list[dict[str, Any]] = [
    {
        "source_matchers": ['alertname="GatewayBackendDown"'],
        "target_matchers": ['alertname=~"GatewayHighLatencyP95|GatewayTTFTRegression|GatewayHighErrorRate"'],
        "equal": ["stack"],
    },
    {
        "source_matchers": ['alertname="GatewayBackendDown"'],
        "target_matchers": ['alertname="GatewayCircuitOpen"'],
        "equal": ["backend"],
    },
    {
        "source_matchers": ['alertname="RedisDown"'],
        "target_matchers": ['alertname="GatewayRedisFailures"'],
        "equal": ["stack"],
    },
    {
        "source_matchers": ['alertname="RedisDown"'],
        "target_matchers": ['alertname="ScrapeTargetDown"', 'job="redis"'],
        "equal": ["stack"],
    },
    {
        "source_matchers": ['alertname="KeyBudgetExhausted"'],
        "target_matchers": ['alertname=~"KeyBudgetWarning|KeyBudgetCritical"'],
        "equal": ["key", "month"],
    },
    {
        "source_matchers": ['alertname="KeyBudgetCritical"'],
        "target_matchers": ['alertname="KeyBudgetWarning"'],
        "equal": ["key", "month"],
    },
]


class ConfigError(ValueError):
    """A setting or a routes line that cannot make a working configuration."""


def setting(env: Mapping[str, str], name: str, default: str = "") -> str:
    """NAME, or the content of the file NAME_FILE names (one trailing newline dropped); not both."""
    value, path = env.get(name, "").strip(), env.get(f"{name}_FILE", "").strip()
    if value and path:
        raise ConfigError(f"set {name} or {name}_FILE, not both")
    if path:
        try:
            value = Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from None
    return value or default


def duration(env: Mapping[str, str], name: str, default: str) -> str:
    value = setting(env, name, default)
    if not DURATION.match(value):
        raise ConfigError(f"{name}={value!r} is not a duration like 30s, 5m or 4h")
    return value


def url(value: str, what: str) -> str:
    if not re.match(r"^https?://[^\s/]+", value):
        raise ConfigError(f"{what}: {value!r} is not an http(s) URL")
    return value


def operator_channels(env: Mapping[str, str]) -> dict[str, list[dict[str, Any]]]:
    """The operators' configured channels, by Alertmanager's receiver field."""
    channels: dict[str, list[dict[str, Any]]] = {}
    if webhook := setting(env, "ALERT_WEBHOOK_URL"):
        channels["webhook_configs"] = [{"url": url(webhook, "ALERT_WEBHOOK_URL")}]
    if slack := setting(env, "ALERT_SLACK_WEBHOOK_URL"):
        entry: dict[str, Any] = {"api_url": url(slack, "ALERT_SLACK_WEBHOOK_URL")}
        if channel := setting(env, "ALERT_SLACK_CHANNEL"):
            entry["channel"] = channel
        channels["slack_configs"] = [entry]
    if to := setting(env, "ALERT_EMAIL_TO"):
        channels["email_configs"] = [{"to": to}]
    return channels


def team_routes(text: str, *, source: str) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Parse the routes file: owner -> its channels (several lines may name one owner)."""
    teams: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        where = f"{source}:{number}"
        if len(fields) < 3:
            raise ConfigError(f"{where}: expected `owner channel target`, got {line!r}")
        owner, channel, target, *rest = fields
        if not OWNER.match(owner):
            raise ConfigError(f"{where}: owner {owner!r} may hold letters, digits and . _ @ - only")
        channels = teams.setdefault(owner, {})
        if channel == "webhook" and not rest:
            channels.setdefault("webhook_configs", []).append({"url": url(target, where)})
        elif channel == "slack" and len(rest) <= 1:
            entry: dict[str, Any] = {"api_url": url(target, where)}
            if rest:
                entry["channel"] = rest[0]
            channels.setdefault("slack_configs", []).append(entry)
        elif channel == "email" and not rest and "@" in target:
            channels.setdefault("email_configs", []).append({"to": target})
        else:
            raise ConfigError(
                f"{where}: expected `{owner} webhook URL`, `{owner} slack URL [#channel]` or "
                f"`{owner} email ADDRESS`, got {line!r}"
            )
    return teams


def parse_routes_file(env: Mapping[str, str]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    path = setting(env, "ALERT_ROUTES_FILE")
    if not path:
        return {}
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"ALERT_ROUTES_FILE: cannot read {path}: {exc.strerror}") from None
    return team_routes(text, source=path)


def receiver(name: str, channels: Mapping[str, list[dict[str, Any]]], *, send_resolved: bool) -> dict[str, Any]:
    """A receiver over `channels`, every entry with `send_resolved` (a receiver with none just drops)."""
    out: dict[str, Any] = {"name": name}
    for field, entries in channels.items():
        out[field] = [{**entry, "send_resolved": send_resolved} for entry in entries]
    return out


def smtp_globals(env: Mapping[str, str], needed: bool) -> dict[str, Any]:
    smarthost = setting(env, "ALERT_SMTP_SMARTHOST")
    if not needed:
        return {}
    if not smarthost or not setting(env, "ALERT_SMTP_FROM"):
        raise ConfigError("e-mail receivers need ALERT_SMTP_SMARTHOST (host:port) and ALERT_SMTP_FROM")
    if not re.match(r"^[^\s:]+:[0-9]+$", smarthost):
        raise ConfigError(f"ALERT_SMTP_SMARTHOST={smarthost!r} is not host:port")
    out: dict[str, Any] = {
        "smtp_smarthost": smarthost,
        "smtp_from": setting(env, "ALERT_SMTP_FROM"),
        "smtp_require_tls": setting(env, "ALERT_SMTP_REQUIRE_TLS", "true").lower() not in ("false", "0", "no"),
    }
    if username := setting(env, "ALERT_SMTP_USERNAME"):
        out["smtp_auth_username"] = username
        out["smtp_auth_password"] = setting(env, "ALERT_SMTP_PASSWORD")
    return out


def render(env: Mapping[str, str]) -> dict[str, Any]:
    """Alertmanager's configuration for `env` (os.environ in use)."""
    operators = operator_channels(env)
    teams = parse_routes_file(env)
    uses_email = "email_configs" in operators or any("email_configs" in t for t in teams.values())
    budget_repeat = duration(env, "ALERT_BUDGET_REPEAT_INTERVAL", "745h")
    budget_grouping = {"group_by": ["alertname", "key", "month"], "repeat_interval": budget_repeat}
    routes: list[dict[str, Any]] = [
        {
            "receiver": f"team-{owner}",
            "matchers": [f'owner="{owner}"'],
            "routes": [{"receiver": f"team-{owner}", "matchers": ['category="budget"'], **budget_grouping}],
        }
        for owner in sorted(teams)
    ]
    routes.append({"receiver": OPERATORS_BUDGET, "matchers": ['category="budget"'], **budget_grouping})
    return {
        "global": {"resolve_timeout": "5m", **smtp_globals(env, uses_email)},
        "route": {
            "receiver": OPERATORS,
            "group_by": ["alertname", "backend", "model", "route"],
            "group_wait": duration(env, "ALERT_GROUP_WAIT", "30s"),
            "group_interval": duration(env, "ALERT_GROUP_INTERVAL", "5m"),
            "repeat_interval": duration(env, "ALERT_REPEAT_INTERVAL", "4h"),
            "routes": routes,
        },
        "inhibit_rules": INHIBIT_RULES,
        "receivers": [
            receiver(OPERATORS, operators, send_resolved=True),
            receiver(OPERATORS_BUDGET, operators, send_resolved=False),
            *(receiver(f"team-{owner}", teams[owner], send_resolved=False) for owner in sorted(teams)),
        ],
    }


def summary(config: Mapping[str, Any]) -> str:
    """One line per receiver: what it sends to, without the addresses (they may carry tokens)."""
    lines = []
    for entry in config["receivers"]:
        kinds = [f"{len(v)} {k.removesuffix('_configs')}" for k, v in entry.items() if k.endswith("_configs")]
        lines.append(f"  {entry['name']}: {', '.join(kinds) or 'no channel (alerts are dropped)'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--output", type=Path, help="write here (mode 0600) instead of printing")
    parser.add_argument("--owner", metavar="UID:GID", help="give the written file to this user (Alertmanager's)")
    args = parser.parse_args(argv)
    try:
        config = render(os.environ)
    except ConfigError as exc:
        print(f"alertmanager-config: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(config, indent=2) + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        tmp = args.output.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        if args.owner:
            uid, _, gid = args.owner.partition(":")
            os.chown(tmp, int(uid), int(gid or uid))
        os.replace(tmp, args.output)
    print(f"alertmanager-config: receivers\n{summary(config)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
