"""scripts/alertmanager_config.py: the file Alertmanager loads, checked by amtool, and the refusals an
operator gets for settings that cannot work."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.alerting import amtool, render_alertmanager_config


def render(tmp_path: Path, env: dict[str, str]) -> tuple[int, str, dict]:
    out = tmp_path / "alertmanager.yml"
    done = render_alertmanager_config(env, out)
    return done.returncode, done.stderr, json.loads(out.read_text()) if done.returncode == 0 else {}


def test_every_channel_for_operators_and_teams_makes_a_configuration_amtool_accepts(tmp_path: Path) -> None:
    routes = tmp_path / "routes"
    routes.write_text(
        "# owner channel target\n"
        "search webhook https://hooks.example.com/search\n"
        "support slack https://hooks.slack.com/services/T0/B0/X #support-alerts\n"
        "support email support-oncall@example.com\n"
    )
    secret = tmp_path / "smtp-password"
    secret.write_text("s3cret\n")
    code, stderr, config = render(
        tmp_path,
        {
            "ALERT_WEBHOOK_URL": "https://relay.example.com/alerts",
            "ALERT_SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/Y",
            "ALERT_SLACK_CHANNEL": "#ops",
            "ALERT_EMAIL_TO": "ops@example.com",
            "ALERT_SMTP_SMARTHOST": "smtp.example.com:587",
            "ALERT_SMTP_FROM": "alerts@example.com",
            "ALERT_SMTP_USERNAME": "alerts",
            "ALERT_SMTP_PASSWORD_FILE": str(secret),
            "ALERT_ROUTES_FILE": str(routes),
        },
    )
    assert code == 0, stderr
    checked = amtool("check-config", str(tmp_path / "alertmanager.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "4 receivers" in checked.stdout and "6 inhibit rules" in checked.stdout
    assert oct((tmp_path / "alertmanager.yml").stat().st_mode & 0o777) == "0o600"
    assert config["global"]["smtp_auth_password"] == "s3cret"  # from the file, its newline dropped
    support = next(r for r in config["receivers"] if r["name"] == "team-support")
    assert support["slack_configs"][0]["channel"] == "#support-alerts"
    assert support["email_configs"][0]["to"] == "support-oncall@example.com"
    # the summary on stderr names channels, never their addresses or passwords
    assert "s3cret" not in stderr and "hooks.slack.com" not in stderr and "example.com" not in stderr


def test_with_nothing_set_every_alert_goes_to_an_operators_receiver_with_no_channel(tmp_path: Path) -> None:
    code, stderr, config = render(tmp_path, {})
    assert code == 0, stderr
    assert amtool("check-config", str(tmp_path / "alertmanager.yml")).returncode == 0
    assert config["route"]["receiver"] == "operators"
    assert [r for r in config["receivers"] if r["name"] == "operators"] == [{"name": "operators"}]
    assert "no channel" in stderr


def test_a_teams_budget_alerts_are_grouped_per_key_and_sent_once_a_month(tmp_path: Path) -> None:
    routes = tmp_path / "routes"
    routes.write_text("search webhook https://hooks.example.com/search\n")
    code, stderr, config = render(tmp_path, {"ALERT_ROUTES_FILE": str(routes)})
    assert code == 0, stderr
    team, operators_budget = config["route"]["routes"]
    assert team["matchers"] == ['owner="search"'] and team["receiver"] == "team-search"
    (budget,) = team["routes"]
    assert budget["group_by"] == ["alertname", "key", "month"] and budget["repeat_interval"] == "745h"
    assert operators_budget["receiver"] == "operators-budget"
    receivers = {r["name"]: r for r in config["receivers"]}
    assert receivers["team-search"]["webhook_configs"][0]["send_resolved"] is False  # no month-rollover noise


def test_settings_that_cannot_work_are_refused_naming_them(tmp_path: Path) -> None:
    routes = tmp_path / "routes"
    secret = tmp_path / "url"
    secret.write_text("https://relay.example.com/x")
    cases = [
        ({"ALERT_WEBHOOK_URL": "relay.example.com"}, "ALERT_WEBHOOK_URL"),
        ({"ALERT_WEBHOOK_URL": "https://a.example", "ALERT_WEBHOOK_URL_FILE": str(secret)}, "not both"),
        ({"ALERT_WEBHOOK_URL_FILE": str(tmp_path / "missing")}, "cannot read"),
        ({"ALERT_EMAIL_TO": "ops@example.com"}, "ALERT_SMTP_SMARTHOST"),
        ({"ALERT_GROUP_WAIT": "soon"}, "ALERT_GROUP_WAIT"),
        ({"ALERT_ROUTES_FILE": str(routes)}, "routes:1"),
    ]
    routes.write_text("search pager 555-0100\n")
    for env, named in cases:
        code, stderr, _ = render(tmp_path, env)
        assert code == 2 and named in stderr, (env, stderr)
        assert "Traceback" not in stderr
