"""The gateway and its model servers as rendered: backends found by DNS on the headless Service, the
drain on SIGTERM, the settings the chart sets, the autoscaler, the migration hook, model sync."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.chart import (
    NAMESPACE,
    RELEASE,
    by_kind,
    env_of,
    gateway_backends,
    one,
    pod_specs,
    render,
    render_set,
)

SERVERS = {
    # values set -> (kind, name, port, probe path)
    "default": ("ollama", "ollama", 11434, "/api/version"),
    "gpu": ("ollama", "ollama", 11434, "/api/version"),
    "adapters": ("llamacpp", "llamacpp", 8080, "/health"),
    "vllm": ("vllm", "vllm", 8000, "/health"),
}


def gateway_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objects, "Deployment", f"{RELEASE}-gateway")["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("set_name", sorted(SERVERS))
def test_the_gateway_finds_each_model_server_replica_by_dns_on_the_headless_service(set_name: str) -> None:
    kind, name, port, _ = SERVERS[set_name]
    objects = render_set(set_name)
    backend = gateway_backends(objects)[0]
    headless = one(objects, "Service", f"{RELEASE}-{name}-headless")
    statefulset = one(objects, "StatefulSet", f"{RELEASE}-{name}")
    assert backend["kind"] == kind and backend["name"] == name and backend["discover"] == "dns"
    assert backend["url"] == f"http://{RELEASE}-{name}-headless.{NAMESPACE}.svc.cluster.local:{port}"
    parallel = statefulset_parallel(statefulset, kind)
    assert backend["max_concurrency"] == parallel
    # The name resolves to every ready pod of the StatefulSet, and only those.
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is False
    assert statefulset["spec"]["serviceName"] == headless["metadata"]["name"]
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert headless["spec"]["selector"].items() <= pod_labels.items()
    (svc_port,) = headless["spec"]["ports"]
    server = statefulset["spec"]["template"]["spec"]["containers"][0]
    assert svc_port["port"] == port and {"name": "http", "containerPort": port, "protocol": "TCP"} in server["ports"]


def statefulset_parallel(statefulset: dict[str, Any], kind: str) -> int:
    """What the server itself is told to run at once: the gateway must send no more than that."""
    server = statefulset["spec"]["template"]["spec"]["containers"][0]
    if kind == "ollama":
        return int(env_of(server)["OLLAMA_NUM_PARALLEL"]["value"])
    if kind == "llamacpp":
        return int(env_of(server)["LLAMA_PARALLEL"]["value"])
    (arg,) = [a for a in server["args"] if a.startswith("--max-num-seqs=")]
    return int(arg.split("=")[1])


@pytest.mark.parametrize("set_name", sorted(SERVERS))
def test_model_servers_have_a_volume_and_probes_for_their_kind(set_name: str) -> None:
    kind, name, port, path = SERVERS[set_name]
    statefulset = one(render_set(set_name), "StatefulSet", f"{RELEASE}-{name}")
    server = statefulset["spec"]["template"]["spec"]["containers"][0]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert server[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    claims = [t["metadata"]["name"] for t in statefulset["spec"].get("volumeClaimTemplates", [])]
    if kind == "llamacpp":
        assert not claims  # reads the shared adapters volume
        volumes = statefulset["spec"]["template"]["spec"]["volumes"]
        assert any(v.get("persistentVolumeClaim", {}).get("readOnly") for v in volumes if v["name"] == "adapters")
    else:
        assert claims == ["data"]


def test_ollama_replicas_get_the_settings_compose_gives_them() -> None:
    statefulset = one(render_set("default"), "StatefulSet", f"{RELEASE}-ollama")
    spec = statefulset["spec"]["template"]["spec"]
    env = env_of(spec["containers"][0])
    assert env["OLLAMA_HOST"]["value"] == "0.0.0.0:11434"
    assert env["OLLAMA_KEEP_ALIVE"]["value"] == "24h"
    assert env["OLLAMA_NUM_PARALLEL"]["value"] == "8"
    assert spec["containers"][0]["image"] == "ollama/ollama:0.12.6"
    pull = next(c for c in spec["containers"] if c["name"] == "pull-models")
    assert env_of(pull)["MODELS"]["value"] == "smollm2:135m"
    assert "ollama pull" in pull["command"][-1]


def test_gpus_are_requested_and_scheduled_from_values() -> None:
    statefulset = one(render_set("gpu"), "StatefulSet", f"{RELEASE}-ollama")
    spec = statefulset["spec"]["template"]["spec"]
    resources = spec["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1 and resources["requests"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    cpu_only = one(render_set("default"), "StatefulSet", f"{RELEASE}-ollama")
    assert "nvidia.com/gpu" not in cpu_only["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_vllm_serves_loras_the_gateway_loads_at_run_time() -> None:
    objects = render_set("vllm")
    server = one(objects, "StatefulSet", f"{RELEASE}-vllm")["spec"]["template"]["spec"]["containers"][0]
    assert "--enable-lora" in server["args"] and "--max-cpu-loras=8" in server["args"]
    assert env_of(server)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"]["value"] == "True"
    assert gateway_backends(objects)[0]["max_adapters"] == 8


def test_llamacpp_loads_every_adapter_in_the_volume() -> None:
    server = one(render_set("adapters"), "StatefulSet", f"{RELEASE}-llamacpp")["spec"]["template"]["spec"]
    script = server["containers"][0]["command"][2]
    assert "for f in /adapters/*.gguf" in script and "--lora-init-without-apply" in script
    assert env_of(server["containers"][0])["LLAMA_MODEL"]["value"] == "/adapters/base.gguf"


@pytest.mark.parametrize(("delay", "grace"), [(5, 30), (10, 120), (0, 1)])
def test_termination_grace_covers_the_drain_delay_and_the_shutdown_grace(delay: int, grace: int) -> None:
    objects = render("--set", f"gateway.drain.delaySeconds={delay}", "--set", f"gateway.drain.graceSeconds={grace}")
    pod = one(objects, "Deployment", f"{RELEASE}-gateway")["spec"]["template"]["spec"]
    env = env_of(pod["containers"][0])
    assert env["GATEWAY_DRAIN_DELAY_S"]["value"] == str(delay)
    assert env["GATEWAY_SHUTDOWN_GRACE_S"]["value"] == str(grace)
    assert pod["terminationGracePeriodSeconds"] == delay + grace + 5


def test_the_gateway_runs_in_production_with_the_migration_left_to_the_hook() -> None:
    objects = render_set("default")
    container = gateway_container(objects)
    env = env_of(container)
    assert {
        k: env[k]["value"] for k in ("GATEWAY_ENV", "GATEWAY_HOST", "GATEWAY_PORT", "GATEWAY_MIGRATE_ON_START")
    } == {
        "GATEWAY_ENV": "production",
        "GATEWAY_HOST": "0.0.0.0",
        "GATEWAY_PORT": "8000",
        "GATEWAY_MIGRATE_ON_START": "false",
    }
    assert env["GATEWAY_DNS_INTERVAL_S"]["value"] == "10"
    assert "command" not in container and "args" not in container, "the image's entrypoint: python -m gateway"
    assert container["image"] == "slm-stack/gateway:0.1.0"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]


def test_extra_backends_follow_the_model_servers_entry() -> None:
    extra = '[{"kind": "openai", "url": "http://vllm-b.other:8000", "name": "vllm-b"}]'
    backends = gateway_backends(render("--set-json", f"gateway.extraBackends={extra}"))
    assert [b["name"] for b in backends] == ["ollama", "vllm-b"]


def test_the_gateway_scales_on_cpu_from_two_replicas_and_keeps_one_through_disruptions() -> None:
    objects = render_set("default")
    hpa = one(objects, "HorizontalPodAutoscaler", f"{RELEASE}-gateway")
    assert hpa["spec"]["minReplicas"] == 2
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": f"{RELEASE}-gateway",
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert "replicas" not in one(objects, "Deployment", f"{RELEASE}-gateway")["spec"], "the HPA owns the count"
    pdb = one(objects, "PodDisruptionBudget", f"{RELEASE}-gateway")
    assert pdb["spec"]["maxUnavailable"] == 1
    fixed = render("--set", "gateway.autoscaling.enabled=false", "--set", "gateway.replicas=3")
    assert not by_kind(fixed, "HorizontalPodAutoscaler")
    assert one(fixed, "Deployment", f"{RELEASE}-gateway")["spec"]["replicas"] == 3


def test_the_migration_is_a_hook_job_that_waits_for_the_database() -> None:
    job = one(render_set("default"), "Job", f"{RELEASE}-migrate")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "post-install,pre-upgrade"
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    pod = job["spec"]["template"]["spec"]
    (wait,) = pod["initContainers"]
    (migrate,) = pod["containers"]
    assert migrate["args"] == ["migrate"]
    assert "create_connection" in wait["command"][-1]
    for container in (wait, migrate):
        ref = env_of(container)["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": f"{RELEASE}-database-secrets", "key": "DATABASE_URL"}
    external = one(render_set("external-db"), "Job", f"{RELEASE}-migrate")["spec"]["template"]["spec"]
    assert env_of(external["containers"][0])["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "slm-databases"


def test_model_sync_gives_every_ollama_replica_the_trainers_versions() -> None:
    objects = render_set("default")
    sync = one(objects, "Deployment", f"{RELEASE}-model-sync")["spec"]["template"]["spec"]
    container = sync["containers"][0]
    assert container["image"] == "slm-stack/model-sync:0.1.0"
    url = f"http://{RELEASE}-ollama-headless.{NAMESPACE}.svc.cluster.local:11434"
    assert container["args"] == [f"--ollama-url={url}", "--runs=/runs", "--every=30", "--ready-file=/tmp/synced"]
    assert "/tmp/synced" in " ".join(container["readinessProbe"]["exec"]["command"])
    (runs,) = [v for v in sync["volumes"] if v["name"] == "runs"]
    claim = one(objects, "PersistentVolumeClaim", runs["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    for other in ("adapters", "vllm"):
        assert not [o for o in render_set(other) if o["metadata"]["name"] == f"{RELEASE}-model-sync"], other


def test_the_runs_volume_access_mode_is_configurable() -> None:
    claim = one(
        render("--set", "runs.persistence.accessMode=ReadWriteMany"), "PersistentVolumeClaim", f"{RELEASE}-runs"
    )
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_external_databases_come_from_the_named_secret_and_nothing_runs_in_the_chart() -> None:
    objects = render_set("external-db")
    names = {o["metadata"]["name"] for o in objects}
    assert not {f"{RELEASE}-redis", f"{RELEASE}-postgres", f"{RELEASE}-database-secrets"} & names
    env = env_of(gateway_container(objects))
    for key in ("REDIS_URL", "DATABASE_URL"):
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "slm-databases", "key": key}


def test_redis_keeps_keys_and_usage_and_its_password_off_the_command_line() -> None:
    redis = one(render_set("default"), "StatefulSet", f"{RELEASE}-redis")["spec"]["template"]["spec"]
    server = redis["containers"][0]
    script = server["command"][-1]
    assert "--appendonly yes" in script and "--maxmemory-policy volatile-lru" in script
    assert "requirepass" in script and "/tmp/auth.conf" in script
    assert server["image"] == "redis:7.4.6-alpine"
    assert "secretKeyRef" in env_of(server)["REDIS_PASSWORD"]["valueFrom"]


def test_the_trainer_job_renders_only_when_enabled_with_optional_gpu() -> None:
    assert not [j for j in by_kind(render_set("default"), "Job") if "trainer" in j["metadata"]["name"]]
    objects = render("--set", "trainer.job.enabled=true", "--set", "trainer.job.gpu.enabled=true")
    job = one(objects, "Job", f"{RELEASE}-trainer-1")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "slm-stack/trainer:0.1.0"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert job["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_every_workload_runs_under_the_releases_service_account_without_a_token() -> None:
    objects = render_set("default")
    (account,) = by_kind(objects, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    for _, pod in pod_specs(objects):
        assert pod["serviceAccountName"] == account["metadata"]["name"]
