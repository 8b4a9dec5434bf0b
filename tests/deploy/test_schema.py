"""values.schema.json refuses what the chart cannot use (helm template fails and names the value), and
accepts every documented gateway setting."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from testkit.processes import REPO_ROOT
from tests.deploy.chart import CHART, RELEASE, env_of, helm, pod_specs, render, template_args, values_file

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
CONFIGURATION = REPO_ROOT / "docs" / "configuration.md"
# Documented settings the chart sets itself (from its own values or generated secrets).
SET_BY_THE_CHART = {
    "GATEWAY_ENV",
    "GATEWAY_HOST",
    "GATEWAY_PORT",
    "GATEWAY_BACKENDS",
    "GATEWAY_ADMIN_KEY",
    "GATEWAY_JWT_SECRET",
    "GATEWAY_KEY_PEPPER",
    "GATEWAY_MIGRATE_ON_START",
    "GATEWAY_DNS_INTERVAL_S",
    "GATEWAY_DRAIN_DELAY_S",
    "GATEWAY_SHUTDOWN_GRACE_S",
}


def refused(*args: str) -> str:
    proc = helm(*template_args(*args), check=False)
    assert proc.returncode != 0, f"helm template accepted {args}"
    return proc.stderr


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--set", "gateway.replicass=3"], "replicass"),
        (["--set", "colour=blue"], "colour"),
        (["--set", "modelServer.ollama.pullModel=x"], "pullModel"),
        (["--set", "networkPolicy.prometheus.podSelector.matchLabel.app=x"], "matchLabel"),
    ],
)
def test_an_unknown_key_is_refused_by_name(args: list[str], named: str) -> None:
    message = refused(*args)
    assert "additional properties" in message and named in message, message


@pytest.mark.parametrize(
    ("args", "path"),
    [
        (["--set", "gateway.replicas=two"], "/gateway/replicas"),
        (["--set", "gateway.autoscaling.enabled=maybe"], "/gateway/autoscaling/enabled"),
        (["--set-json", 'modelServer.parallel="8"'], "/modelServer/parallel"),
        (["--set-json", 'gateway.settings={"GATEWAY_WORKERS": 2}'], "/gateway/settings/GATEWAY_WORKERS"),
        (["--set", "modelServer.kind=tgi"], "/modelServer/kind"),
        (["--set", "keda.minReplicas=0"], "/keda/minReplicas"),
        (["--set", "gateway.image.tag=latest"], "/gateway/image/tag"),
        (["--set", "redis.persistence.size=lots"], "/redis/persistence/size"),
    ],
)
def test_a_wrong_type_or_value_is_refused_naming_the_value(args: list[str], path: str) -> None:
    message = refused(*args)
    assert path in message, message


def test_every_object_in_the_schema_is_closed_and_described() -> None:
    """Every object of the schema is closed (additionalProperties false) or a declared map, and every
    property has a description. The free-form ones: Kubernetes' own affinity terms (the API server checks
    them), the trainer's run config (the trainer checks it) and Helm's global."""

    def walk(node: dict[str, Any], where: str) -> int:
        count = 0
        if "properties" in node:
            assert node.get("additionalProperties") is False, f"{where}: open object"
            for key, child in node["properties"].items():
                assert child.get("description"), f"{where}.{key}: no description"
                count += 1 + walk(child, f"{where}.{key}")
        elif node.get("type") == "object" and "additionalProperties" not in node:
            assert where.endswith(("Affinity", ".config", ".global")), f"{where}: a free-form object"
        if isinstance(node.get("items"), dict):
            count += walk(node["items"], f"{where}[]")
        return count

    assert walk(SCHEMA, "$") > 150


def documented_settings() -> set[str]:
    table = CONFIGURATION.read_text().split("<!-- settings:")[1].split("<!-- /settings -->")[0]
    return set(re.findall(r"^\| `(GATEWAY_[A-Z0-9_]+)` \|", table, flags=re.M))


def test_every_documented_gateway_setting_can_be_set_and_reaches_the_gateway(tmp_path: Path) -> None:
    settable = sorted(documented_settings() - SET_BY_THE_CHART)
    assert len(settable) > 40, "docs/configuration.md's table was not found"
    values = {"gateway": {"settings": {name: f"value-of-{name}" for name in settable}}}
    objects = render("-f", values_file(tmp_path, values))
    gateway = next(pod for w, pod in pod_specs(objects) if w["metadata"]["name"] == f"{RELEASE}-gateway")
    env = env_of(gateway["containers"][0])
    for name in settable:
        assert env[name]["value"] == f"value-of-{name}"


@pytest.mark.parametrize("name", sorted(SET_BY_THE_CHART))
def test_a_setting_the_chart_sets_itself_is_refused_in_gateway_settings(tmp_path: Path, name: str) -> None:
    values = values_file(tmp_path, {"gateway": {"settings": {name: "x"}}})
    message = refused("-f", values)
    assert name in message, message


def test_a_setting_outside_the_gateways_names_is_refused(tmp_path: Path) -> None:
    message = refused("-f", values_file(tmp_path, {"gateway": {"settings": {"REDIS_URL": "redis://elsewhere"}}}))
    assert "REDIS_URL" in message, message


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"externalDatabases": {"existingSecret": "dbs"}}, "set redis.enabled=false and postgres.enabled=false"),
        ({"postgres": {"enabled": False}}, "needs externalDatabases.existingSecret"),
        ({"ingress": {"edgeLimits": {"burst": 30}}}, "must be a multiple of requestsPerSecond"),
        ({"gatewayApi": {"enabled": True}}, "needs gatewayApi.parentRefs"),
        ({"keda": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}, "keda.maxReplicas"),
        ({"fullnameOverride": "a" * 30 + "b"}, "fullnameOverride"),
    ],
)
def test_combinations_the_schema_cannot_express_fail_the_render_with_a_reason(
    tmp_path: Path, values: dict[str, Any], says: str
) -> None:
    message = refused("-f", values_file(tmp_path, values))
    assert says in message, message


def test_each_values_file_beside_the_chart_holds_only_known_keys() -> None:
    """The documented values files are checked by the same schema (they render: test_render), and none of
    them repeats the defaults wholesale."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    for path in CHART.glob("values-*.yaml"):
        own = yaml.safe_load(path.read_text())
        assert own and own != defaults, path.name
        assert set(own) <= set(SCHEMA["properties"]), path.name
