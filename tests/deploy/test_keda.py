"""The KEDA ScaledObject: rendered only when asked for, scaling the model-server StatefulSet on the
gateway's queue (requests in flight on replicas + requests waiting in the gateway)."""

from __future__ import annotations

import pytest

from tests.deploy.chart import RELEASE, VALUE_SETS, by_kind, one, render, render_set


@pytest.mark.parametrize("set_name", [n for n in sorted(VALUE_SETS) if "keda" not in n])
def test_no_scaled_object_when_keda_is_off(set_name: str) -> None:
    objects = render_set(set_name)
    assert not by_kind(objects, "ScaledObject")
    assert not [o for o in objects if o["apiVersion"].startswith("keda.sh/")]


@pytest.mark.parametrize("set_name", ["keda", "keda-flag"])
def test_the_scaled_object_scales_the_model_servers_on_the_gateways_queue(set_name: str) -> None:
    objects = render_set(set_name)
    (scaled,) = by_kind(objects, "ScaledObject")
    target = scaled["spec"]["scaleTargetRef"]
    statefulset = one(objects, "StatefulSet", target["name"])
    assert (
        target["kind"] == "StatefulSet"
        and statefulset["metadata"]["labels"]["app.kubernetes.io/role"] == "model-server"
    )
    assert "replicas" not in statefulset["spec"], "KEDA owns the replica count: an upgrade must not reset it"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    query = trigger["metadata"]["query"]
    assert "sum(gateway_requests_in_flight)" in query and "sum(gateway_requests_waiting)" in query
    assert query.count("or vector(0)") == 2
    # Each replica carries its parallel slots by default: OLLAMA_NUM_PARALLEL, the gateway's max_concurrency.
    assert trigger["metadata"]["threshold"] == "8"
    assert scaled["spec"]["minReplicaCount"] >= 1


def test_the_query_can_count_one_model_and_the_target_per_replica_can_be_set() -> None:
    objects = render(
        "--set", "keda.enabled=true",
        "--set", "keda.model=smollm2:135m",
        "--set", "keda.targetRequestsPerReplica=3",
        "--set", "keda.serverAddress=http://prom.mon:9090",
        "--set", "keda.minReplicas=2",
        "--set", "keda.maxReplicas=9",
    )  # fmt: skip
    (scaled,) = by_kind(objects, "ScaledObject")
    metadata = scaled["spec"]["triggers"][0]["metadata"]
    assert metadata["query"] == (
        '(sum(gateway_requests_in_flight{model="smollm2:135m"}) or vector(0))'
        ' + (sum(gateway_requests_waiting{model="smollm2:135m"}) or vector(0))'
    )
    assert metadata["threshold"] == "3"
    assert metadata["serverAddress"] == "http://prom.mon:9090"
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (2, 9)


def test_the_threshold_follows_the_model_servers_parallel_slots() -> None:
    objects = render("--set", "keda.enabled=true", "--set", "modelServer.parallel=16")
    (scaled,) = by_kind(objects, "ScaledObject")
    assert scaled["spec"]["triggers"][0]["metadata"]["threshold"] == "16"
    assert (
        one(objects, "StatefulSet", f"{RELEASE}-ollama")["metadata"]["name"] == scaled["spec"]["scaleTargetRef"]["name"]
    )
