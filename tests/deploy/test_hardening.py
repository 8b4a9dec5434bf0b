"""Every pod the chart runs is hardened as compose's services are (read_only, cap_drop ALL,
no-new-privileges, a non-root user), with resources and probes, and no secret reaches the rendered
output except inside the generated Secrets."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.chart import (
    CHART,
    RELEASE,
    VALUE_SETS,
    by_kind,
    containers,
    env_of,
    everything_args,
    helm,
    pod_specs,
    render,
    render_set,
    secret_values,
    template_args,
)

# Containers that run without a liveness or readiness probe, and why (the rest must have both).
NO_LIVENESS = {
    "model-sync": "serves no port and writes no heartbeat: a crash ends the process, which restarts it",
    "pull-models": "a wait loop after the pulls; its readiness (each model present) is what matters",
}
NO_READINESS: dict[str, str] = {}


def all_rendered(tmp: Path) -> list[tuple[str, list[dict[str, Any]]]]:
    return [(name, render_set(name)) for name in sorted(VALUE_SETS)] + [("everything", render(*everything_args(tmp)))]


def effective(pod: dict[str, Any], container: dict[str, Any], field: str) -> Any:
    """A security setting as Kubernetes applies it: the container's, else the pod's."""
    own = container.get("securityContext", {})
    return own[field] if field in own else pod.get("securityContext", {}).get(field)


def test_every_container_runs_hardened(tmp_path: Path) -> None:
    checked = 0
    for set_name, objects in all_rendered(tmp_path):
        for workload, pod in pod_specs(objects):
            where = f"{set_name}: {workload['kind']} {workload['metadata']['name']}"
            assert pod.get("automountServiceAccountToken") is False, f"{where}: API token mounted"
            assert pod.get("serviceAccountName", "default") != "default", f"{where}: default service account"
            assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), where
            for c in containers(pod):
                at = f"{where}, container {c['name']}"
                ctx = c.get("securityContext", {})
                assert effective(pod, c, "runAsNonRoot") is True, f"{at}: runAsNonRoot"
                assert (effective(pod, c, "runAsUser") or 0) > 0, f"{at}: runs as root"
                assert ctx.get("readOnlyRootFilesystem") is True, f"{at}: writable root filesystem"
                assert ctx.get("allowPrivilegeEscalation") is False, f"{at}: privilege escalation"
                assert ctx.get("privileged", False) is False, f"{at}: privileged"
                assert ctx.get("capabilities", {}).get("drop") == ["ALL"], f"{at}: capabilities not dropped"
                assert not ctx.get("capabilities", {}).get("add"), f"{at}: capabilities added"
                assert (effective(pod, c, "seccompProfile") or {}).get("type") == "RuntimeDefault", f"{at}: seccomp"
                resources = c.get("resources", {})
                for kind in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{at}: {kind} lack cpu/memory"
                checked += 1
    assert checked > 50


def test_every_container_can_write_only_to_its_volumes(tmp_path: Path) -> None:
    """Read-only root: each container has /tmp on an emptyDir (compose's tmpfs), and every path it writes
    is a volume."""
    for set_name, objects in all_rendered(tmp_path):
        for workload, pod in pod_specs(objects):
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            claims = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
            for c in containers(pod):
                mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
                at = f"{set_name}: {workload['metadata']['name']}/{c['name']}"
                if c["name"] == "metrics":  # redis_exporter writes nothing; Redis's /tmp holds its password file
                    continue
                assert "/tmp" in mounts, f"{at}: no writable /tmp"
                assert "emptyDir" in volumes[mounts["/tmp"]], f"{at}: /tmp is not an emptyDir"
                for name in mounts.values():
                    assert name in volumes or name in claims, f"{at}: mount {name} has no volume"


def test_long_running_containers_have_liveness_and_readiness_probes(tmp_path: Path) -> None:
    seen_without = set()
    for set_name, objects in all_rendered(tmp_path):
        for workload, pod in pod_specs(objects):
            if workload["kind"] == "Job":
                continue  # batch runs: bounded by backoffLimit and activeDeadlineSeconds instead
            for c in pod["containers"]:
                at = f"{set_name}: {workload['metadata']['name']}/{c['name']}"
                if "livenessProbe" not in c:
                    assert c["name"] in NO_LIVENESS, f"{at}: no liveness probe"
                    seen_without.add(c["name"])
                if "readinessProbe" not in c:
                    assert c["name"] in NO_READINESS, f"{at}: no readiness probe"
    assert seen_without == set(NO_LIVENESS), "an exception listed above no longer applies: remove it"


def test_jobs_are_bounded() -> None:
    for objects in (render_set("default"), render("--set", "trainer.job.enabled=true")):
        for job in by_kind(objects, "Job"):
            spec = job["spec"]
            assert spec["activeDeadlineSeconds"] > 0 and spec["backoffLimit"] >= 0, job["metadata"]["name"]
            assert spec["template"]["spec"]["restartPolicy"] == "Never"


SECRET_ENV = re.compile(r"(KEY|SECRET|PEPPER|PASSWORD|TOKEN|_URL$)")


def test_secrets_reach_containers_only_through_secret_refs(tmp_path: Path) -> None:
    for set_name, objects in all_rendered(tmp_path):
        for workload, pod in pod_specs(objects):
            for c in containers(pod):
                for name, entry in env_of(c).items():
                    if SECRET_ENV.search(name) and not name.endswith("_FILE"):  # *_FILE: a path to a mounted Secret
                        if name.endswith("_URL") and "@" not in entry.get("value", "@"):
                            continue  # a plain address (the gateway's Service), no credential in it
                        assert "secretKeyRef" in entry.get("valueFrom", {}), (
                            f"{set_name}: {workload['metadata']['name']}/{c['name']} sets {name} as a literal"
                        )


def test_no_secret_value_appears_outside_the_secrets_with_default_values() -> None:
    objects = render_set("default")
    secrets = secret_values(objects)
    assert {
        "GATEWAY_ADMIN_KEY",
        "GATEWAY_JWT_SECRET",
        "GATEWAY_KEY_PEPPER",
        "REDIS_PASSWORD",
        "POSTGRES_PASSWORD",
    } <= set(secrets)
    rest = yaml.safe_dump_all([o for o in objects if o["kind"] != "Secret"])
    passwords = [v for k, v in secrets.items() if not k.endswith("_URL")]
    for value in passwords:
        assert len(value) >= 32
        assert value not in rest
        assert base64.b64encode(value.encode()).decode() not in rest


def test_secrets_are_generated_per_install_not_defaults() -> None:
    """Two renders (no cluster: lookup finds nothing) give different values: nothing fixed in the chart."""
    first = secret_values([d for d in yaml.safe_load_all(helm(*template_args()).stdout) if d])
    second = secret_values([d for d in yaml.safe_load_all(helm(*template_args()).stdout) if d])
    for key in ("GATEWAY_ADMIN_KEY", "GATEWAY_JWT_SECRET", "GATEWAY_KEY_PEPPER", "REDIS_PASSWORD", "POSTGRES_PASSWORD"):
        assert first[key] != second[key], key
    assert first["GATEWAY_ADMIN_KEY"].startswith("sk-admin-")


def test_the_values_hold_no_secret() -> None:
    """values.yaml and every values file: no key that names a secret has a value."""

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                names_a_secret = re.search(r"(?i)(password|secret|token|pepper|apikey|api_key)", key)
                if names_a_secret and not key.startswith("existing"):  # existingSecret: a Secret's name
                    assert value in (None, "", {}, []), f"{path}.{key} holds a value"
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for item in node:
                walk(item, path)

    for path in [CHART / "values.yaml", *CHART.glob("values-*.yaml")]:
        walk(yaml.safe_load(path.read_text()), path.name)


def test_an_existing_gateway_secret_replaces_the_generated_one() -> None:
    objects = render("--set", "gateway.existingSecret=my-gateway-keys")
    assert f"{RELEASE}-gateway-secrets" not in {s["metadata"]["name"] for s in by_kind(objects, "Secret")}
    gateway = next(pod for w, pod in pod_specs(objects) if w["metadata"]["name"] == f"{RELEASE}-gateway")
    env = env_of(gateway["containers"][0])
    assert env["GATEWAY_ADMIN_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "my-gateway-keys"
