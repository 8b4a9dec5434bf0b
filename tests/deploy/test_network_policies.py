"""NetworkPolicies: everything in the release is denied, then exactly the stack's paths are allowed.

The rendered policies are evaluated as Kubernetes applies them (a connection needs an egress rule of
some policy selecting the source, when any selects it for Egress, and an ingress rule of some policy
selecting the destination, when any selects it for Ingress; rules are ORed; a peer with only a
podSelector means the policy's namespace), over the pods the chart runs and the outside peers the values
name (ingress controller, Prometheus, cluster DNS, the internet).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.chart import NAMESPACE, RELEASE, by_kind, everything_args, pod_specs, render, render_set


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    labels: dict[str, str] = field(hash=False)
    namespace_labels: dict[str, str] = field(hash=False)
    ip: str = "10.1.0.1"


def outside(name: str, namespace: str, labels: dict[str, str], ip: str = "10.2.0.1") -> Pod:
    return Pod(name, namespace, labels, {"kubernetes.io/metadata.name": namespace}, ip)


INGRESS_CONTROLLER = outside("ingress-controller", "ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"})
PROMETHEUS = outside("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"})
DNS = outside("dns", "kube-system", {"k8s-app": "kube-dns"})
STRANGER = outside("stranger", NAMESPACE, {"app": "something-else"})
INTERNET = outside("internet", "", {}, ip="93.184.216.34")
CLUSTER_ADDRESS = outside("cluster-address", "", {}, ip="10.3.0.9")


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert not selector.get("matchExpressions"), "the evaluator reads matchLabels only"
    return selector.get("matchLabels", {}).items() <= labels.items()


def peer_matches(peer: dict[str, Any], policy_ns: str, pod: Pod) -> bool:
    if "ipBlock" in peer:
        if not pod.ip or pod.namespace:  # ipBlock is for addresses outside the cluster's pods
            return False
        block = peer["ipBlock"]
        addr = ipaddress.ip_address(pod.ip)
        inside = addr in ipaddress.ip_network(block["cidr"])
        return inside and not any(addr in ipaddress.ip_network(e) for e in block.get("except", []))
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], pod.namespace_labels):
            return False
    elif pod.namespace != policy_ns:
        return False
    return selects(peer.get("podSelector", {}), pod.labels)


def port_matches(rule: dict[str, Any], port: int, protocol: str) -> bool:
    ports = rule.get("ports")
    return not ports or any(p["port"] == port and p.get("protocol", "TCP") == protocol for p in ports)


def allowed(policies: list[dict[str, Any]], src: Pod, dst: Pod, port: int, protocol: str = "TCP") -> bool:
    def side(pod: Pod, direction: str, other: Pod) -> bool:
        key, peers = ("Egress", "to") if direction == "egress" else ("Ingress", "from")
        governing = [
            p
            for p in policies
            if p["metadata"]["namespace"] == pod.namespace
            and key in p["spec"]["policyTypes"]
            and selects(p["spec"]["podSelector"], pod.labels)
        ]
        if not governing:
            return True  # a pod no policy selects is not isolated (the outside peers here)
        for policy in governing:
            for rule in policy["spec"].get(direction) or []:
                if not port_matches(rule, port, protocol):
                    continue
                if peers not in rule or any(
                    peer_matches(peer, policy["metadata"]["namespace"], other) for peer in rule[peers]
                ):
                    return True
        return False

    return side(src, "egress", dst) and side(dst, "ingress", src)


def release_pods(objects: list[dict[str, Any]]) -> dict[str, Pod]:
    """One Pod per workload, by its component label (the model server as "model-server")."""
    pods = {}
    for workload, _ in pod_specs(objects):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        role = (
            "model-server"
            if labels.get("app.kubernetes.io/role") == "model-server"
            else labels["app.kubernetes.io/component"]
        )
        pods[role] = Pod(role, NAMESPACE, labels, {"kubernetes.io/metadata.name": NAMESPACE})
    return pods


def model_port(objects: list[dict[str, Any]]) -> int:
    (statefulset,) = [
        s for s in by_kind(objects, "StatefulSet") if s["metadata"]["labels"].get("app.kubernetes.io/role")
    ]
    return statefulset["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]


def test_a_default_deny_covers_every_pod_of_the_release() -> None:
    objects = render_set("default")
    (deny,) = [p for p in by_kind(objects, "NetworkPolicy") if p["metadata"]["name"] == f"{RELEASE}-default-deny"]
    assert deny["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny["spec"] and "egress" not in deny["spec"]
    for pod in release_pods(objects).values():
        assert selects(deny["spec"]["podSelector"], pod.labels), pod.name


@pytest.mark.parametrize("set_name", ["default", "adapters", "vllm"])
def test_the_stacks_paths_are_allowed(set_name: str) -> None:
    objects = render_set(set_name)
    policies = by_kind(objects, "NetworkPolicy")
    pods = release_pods(objects)
    port = model_port(objects)
    expected = [
        (INGRESS_CONTROLLER, pods["gateway"], 8000, "TCP"),
        (PROMETHEUS, pods["gateway"], 8000, "TCP"),
        (PROMETHEUS, pods["redis"], 9121, "TCP"),
        (pods["gateway"], pods["model-server"], port, "TCP"),
        (pods["gateway"], pods["redis"], 6379, "TCP"),
        (pods["gateway"], pods["postgres"], 5432, "TCP"),
        (pods["migrate"], pods["postgres"], 5432, "TCP"),
        (pods["model-server"], INTERNET, 443, "TCP"),
    ]
    expected += [
        (pods[name], DNS, 53, proto) for name in pods for proto in ("UDP", "TCP") if name not in {"redis", "postgres"}
    ]
    if "model-sync" in pods:
        expected.append((pods["model-sync"], pods["model-server"], port, "TCP"))
    for src, dst, p, proto in expected:
        assert allowed(policies, src, dst, p, proto), f"{src.name} -> {dst.name}:{p}/{proto} is blocked"


@pytest.mark.parametrize("set_name", ["default", "adapters", "vllm"])
def test_everything_else_is_denied(set_name: str) -> None:
    objects = render_set(set_name)
    policies = by_kind(objects, "NetworkPolicy")
    pods = release_pods(objects)
    port = model_port(objects)
    denied = [
        (STRANGER, pods["gateway"], 8000),  # only the ingress controller and Prometheus reach the gateway
        (INGRESS_CONTROLLER, pods["model-server"], port),  # the model servers are behind the gateway
        (STRANGER, pods["redis"], 6379),
        (pods["model-server"], pods["redis"], 6379),
        (pods["model-server"], pods["postgres"], 5432),
        (pods["model-server"], CLUSTER_ADDRESS, 443),  # the internet, not the cluster's own ranges
        (pods["model-server"], INTERNET, 80),
        (pods["gateway"], INTERNET, 443),  # like compose's internal network: no way out
        (pods["gateway"], pods["postgres"], 6379),
        (pods["migrate"], pods["redis"], 6379),
        (pods["redis"], INTERNET, 443),
        (pods["postgres"], INTERNET, 443),
        (pods["redis"], DNS, 53),
        (PROMETHEUS, pods["postgres"], 5432),
    ]
    if "model-sync" in pods:
        denied += [(pods["model-sync"], pods["postgres"], 5432), (pods["model-sync"], INTERNET, 443)]
    for src, dst, p in denied:
        assert not allowed(policies, src, dst, p), f"{src.name} -> {dst.name}:{p} is allowed"


def test_the_trainer_job_reaches_the_model_servers_gateway_and_database_only(tmp_path: Path) -> None:
    objects = render(*everything_args(tmp_path))
    policies = by_kind(objects, "NetworkPolicy")
    pods = release_pods(objects)
    trainer = pods["trainer"]
    assert allowed(policies, trainer, pods["model-server"], model_port(objects))
    assert allowed(policies, trainer, pods["gateway"], 8000)
    assert allowed(policies, trainer, pods["postgres"], 5432)
    assert not allowed(policies, trainer, pods["redis"], 6379)
    assert not allowed(policies, trainer, INTERNET, 443)
    # The gateway's extra egress (an OTLP collector here) is open, only on its port.
    collector = outside("otel", "", {}, ip="10.99.1.1")
    assert allowed(policies, pods["gateway"], collector, 4318)
    assert not allowed(policies, pods["gateway"], collector, 22)


def test_with_external_databases_the_named_addresses_are_reachable_and_nothing_else() -> None:
    objects = render_set("external-db")
    policies = by_kind(objects, "NetworkPolicy")
    pods = release_pods(objects)
    database = outside("managed-postgres", "", {}, ip="10.20.5.5")
    assert allowed(policies, pods["gateway"], database, 5432)
    assert allowed(policies, pods["migrate"], database, 5432)
    assert not allowed(policies, pods["gateway"], database, 22)
    assert not allowed(policies, pods["gateway"], outside("elsewhere", "", {}, ip="10.30.0.1"), 5432)


def test_switching_network_policies_off_renders_none() -> None:
    assert not by_kind(render("--set", "networkPolicy.enabled=false"), "NetworkPolicy")
