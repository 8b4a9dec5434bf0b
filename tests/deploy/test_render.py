"""The chart lints and renders for every documented values set, and what it renders is valid Kubernetes 1.33.

Kinds from CRDs (KEDA's ScaledObject, the Prometheus Operator's ServiceMonitor and PrometheusRule, the
Gateway API's HTTPRoute) have no schema in kubernetes-validate: their metadata is checked against
Kubernetes' ObjectMeta schema and their spec by the tests of each feature (and the PrometheusRule's
groups by promtool); their spec schemas are not checked here.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource

from tests.deploy.chart import (
    CHART,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    VALUE_SETS,
    by_kind,
    everything_args,
    helm,
    render,
    render_set,
)

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the test extras")

CRD_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
}


def object_meta_validator() -> jsonschema.Draft202012Validator:
    """Kubernetes 1.33's ObjectMeta schema (strict: no unknown fields), from kubernetes-validate's copy,
    resolved as kubernetes-validate resolves its own."""
    folder = resources.files("kubernetes_validate") / "kubernetes-json-schema" / "v1.33.0-local-strict"
    schema = json.loads((folder / "objectmeta-meta-v1.json").read_text())
    definitions = Resource.from_contents(json.loads((folder / "_definitions.json").read_text()))
    return jsonschema.Draft202012Validator(schema, registry=definitions @ Registry())


def validate_all(objects: list[dict[str, Any]]) -> Counter[str]:
    """Each object against Kubernetes 1.33's schemas, strict; what was checked how, counted."""
    counted: Counter[str] = Counter()
    meta = object_meta_validator()
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            meta.validate(obj["metadata"])
            counted["crd (metadata only)"] += 1
            continue
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        counted["schema"] += 1
    return counted


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_passes_strict(name: str) -> None:
    proc = helm("lint", "--strict", str(CHART), *VALUE_SETS[name], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_rendered_object_is_valid_kubernetes_1_33(name: str) -> None:
    objects = render_set(name)
    counted = validate_all(objects)
    assert sum(counted.values()) == len(objects) and counted["schema"] > 0, counted


def test_every_template_renders_valid_objects_with_everything_switched_on(tmp_path: Path) -> None:
    objects = render(*everything_args(tmp_path))
    counted = validate_all(objects)
    kinds = {o["kind"] for o in objects}
    assert {"ScaledObject", "ServiceMonitor", "PrometheusRule", "HTTPRoute", "ConfigMap", "Ingress"} <= kinds
    assert counted["crd (metadata only)"] == len([o for o in objects if (o["apiVersion"], o["kind"]) in CRD_KINDS])
    assert len([o for o in by_kind(objects, "Job") if o["metadata"]["name"].startswith(f"{RELEASE}-trainer-")]) == 1


def test_the_schema_validation_catches_a_wrong_field() -> None:
    """The check above can fail: a misplaced field in a Deployment is refused."""
    objects = render_set("default")
    deployment = json.loads(json.dumps(by_kind(objects, "Deployment")[0]))
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)


def test_the_default_install_has_the_compose_stacks_parts() -> None:
    """Gateway, Ollama, model sync, Redis, Postgres, the migration, the edge, in the namespace given."""
    objects = render_set("default")
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert {
        ("Deployment", f"{RELEASE}-gateway"),
        ("Service", f"{RELEASE}-gateway"),
        ("HorizontalPodAutoscaler", f"{RELEASE}-gateway"),
        ("PodDisruptionBudget", f"{RELEASE}-gateway"),
        ("StatefulSet", f"{RELEASE}-ollama"),
        ("Service", f"{RELEASE}-ollama-headless"),
        ("Service", f"{RELEASE}-ollama"),
        ("Deployment", f"{RELEASE}-model-sync"),
        ("StatefulSet", f"{RELEASE}-redis"),
        ("StatefulSet", f"{RELEASE}-postgres"),
        ("Job", f"{RELEASE}-migrate"),
        ("Ingress", f"{RELEASE}-gateway"),
        ("NetworkPolicy", f"{RELEASE}-default-deny"),
    } <= names
    optional = {"ScaledObject", "ServiceMonitor", "PrometheusRule", "HTTPRoute", "ConfigMap"}
    assert not optional & {o["kind"] for o in objects}, "off by default: they need CRDs or Grafana"
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "ServiceAccount"} == {NAMESPACE}


def test_a_packaged_chart_renders_the_same_as_the_folder(tmp_path: Path) -> None:
    """`helm package` follows the chart's links to prometheus/rules and grafana/dashboards: the archive
    carries the files themselves and renders the same objects."""
    helm("package", str(CHART), "--destination", str(tmp_path))
    (archive,) = tmp_path.glob("slm-stack-*.tgz")
    listing = subprocess.run(["tar", "-tzf", str(archive)], capture_output=True, text=True, check=True).stdout
    assert "slm-stack/files/prometheus-rules/alerts.yml" in listing
    assert "slm-stack/files/grafana-dashboards/overview.json" in listing
    switches = ["--set", "prometheusRule.enabled=true", "--set", "grafanaDashboards.enabled=true"]
    args = ["template", RELEASE, "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION, *switches]
    packaged = [d for d in yaml.safe_load_all(helm(*args[:2], str(archive), *args[2:]).stdout) if d]
    unpacked = render(*switches)
    strip = [
        (o["kind"], o["metadata"]["name"], o.get("spec"), o.get("data")) for o in packaged if o["kind"] != "Secret"
    ]
    same = [(o["kind"], o["metadata"]["name"], o.get("spec"), o.get("data")) for o in unpacked if o["kind"] != "Secret"]
    assert strip == same


def test_the_notes_tell_how_to_get_the_admin_key_and_call_the_api() -> None:
    """What `helm install` prints (rendered client-side: --dry-run=client needs no cluster)."""
    args = ["install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client"]
    notes = helm(*args).stdout.split("NOTES:", 1)[1]
    assert f"get secret {RELEASE}-gateway-secrets" in notes and "{.data.GATEWAY_ADMIN_KEY}" in notes
    assert f"port-forward svc/{RELEASE}-gateway 8000:8000" in notes
    assert "/v1/chat/completions" in notes and '"model": "smollm2:135m"' in notes
    own = helm(*args, "--set", "gateway.existingSecret=my-keys").stdout.split("NOTES:", 1)[1]
    assert "get secret my-keys" in own
