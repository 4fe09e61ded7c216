"""The NetworkPolicies deny everything by default and allow exactly Runwire's real flows."""

from __future__ import annotations

import copy
from itertools import product

import pytest

from tests.k8s.conftest import Docs, target_namespace
from tests.k8s.netpol import Endpoint, Policy, connection_allowed
from tests.k8s.render import of_kind, workloads

TARGETS_WITH_POLICIES = ("base+network-policies", "dev", "prod")
SERVICES = ("gateway", "execution", "registry", "bridge")
PORTS = ((8080, "TCP"), (50051, "TCP"), (5432, "TCP"), (6379, "TCP"), (9090, "TCP"), (53, "UDP"), (53, "TCP"))

# Peers outside the namespace: an external client, an ingress controller, Prometheus, DNS.
INTERNET = Endpoint("internet", external=True)
OUTSIDE = (
    INTERNET,
    Endpoint("ingress-controller", "ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}),
    Endpoint("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"}),
    Endpoint("kube-dns", "kube-system", {"k8s-app": "kube-dns"}),
)

Flow = tuple[str, str, int, str]


def policies_of(docs: Docs, namespace: str) -> list[Policy]:
    policies = copy.deepcopy(of_kind(docs, "NetworkPolicy"))
    for policy in policies:
        policy["metadata"].setdefault("namespace", namespace)
    return policies


def endpoints_of(docs: Docs, namespace: str) -> list[Endpoint]:
    pods = [
        Endpoint(w["metadata"]["name"], namespace, w["spec"]["template"]["metadata"]["labels"])
        for w in workloads(docs)
    ]
    # A pod nobody planned for, e.g. `kubectl run debug` in the namespace.
    pods.append(Endpoint("stranger", namespace, {"run": "debug"}))
    return pods + list(OUTSIDE)


def expected_flows(docs: Docs, namespace: str) -> set[Flow]:
    names = {w["metadata"]["name"] for w in workloads(docs)}
    database = "postgres" if "postgres" in names else "internet"
    cache = "redis" if "redis" in names else "internet"
    flows: set[Flow] = {
        ("gateway", "execution", 50051, "TCP"),
        ("gateway", "registry", 50051, "TCP"),
        ("gateway", "bridge", 50051, "TCP"),
        ("execution", "registry", 50051, "TCP"),
        ("execution", "bridge", 50051, "TCP"),
        ("registry", "bridge", 50051, "TCP"),
        ("registry", database, 5432, "TCP"),
        ("registry-migrate", database, 5432, "TCP"),
        ("bridge", cache, 6379, "TCP"),
        ("gateway", cache, 6379, "TCP"),  # the per-user limits shared by the replicas
    }
    flows |= {(peer.name, "gateway", 8080, "TCP") for peer in OUTSIDE}  # the edge: from anywhere
    flows |= {("prometheus", service, 9090, "TCP") for service in SERVICES}
    flows |= {
        (pod.name, "kube-dns", 53, protocol)
        for pod in endpoints_of(docs, namespace)
        if not pod.external and pod.namespace == namespace
        for protocol in ("UDP", "TCP")
    }
    # Managed PostgreSQL and Redis live outside the cluster at addresses the manifests
    # cannot know, so those egress rules are limited by port only (an overlay narrows
    # them with an ipBlock): on that port they reach anything outside the namespace.
    for peer in OUTSIDE:
        flows |= {
            ("registry", peer.name, 5432, "TCP"),
            ("registry-migrate", peer.name, 5432, "TCP"),
            ("bridge", peer.name, 6379, "TCP"),
            ("gateway", peer.name, 6379, "TCP"),
        }
    return flows


@pytest.mark.parametrize("target", TARGETS_WITH_POLICIES)
def test_the_policies_start_by_denying_all_traffic_of_the_namespace(
    rendered: dict[str, Docs], target: str
) -> None:
    deny = [
        p["spec"]
        for p in of_kind(rendered[target], "NetworkPolicy")
        if p["spec"]["podSelector"] == {} and "ingress" not in p["spec"] and "egress" not in p["spec"]
    ]
    assert deny == [{"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}]


@pytest.mark.parametrize("target", TARGETS_WITH_POLICIES)
def test_exactly_the_real_flows_are_allowed(rendered: dict[str, Docs], target: str) -> None:
    docs = rendered[target]
    namespace = target_namespace(target)
    policies = policies_of(docs, namespace)
    endpoints = endpoints_of(docs, namespace)
    expected = expected_flows(docs, namespace)
    wrong = []
    for source, destination, (port, protocol) in product(endpoints, endpoints, PORTS):
        if namespace not in (source.namespace, destination.namespace):
            continue  # neither end is governed by these policies
        allowed = connection_allowed(policies, source, destination, port, protocol)
        if allowed != ((source.name, destination.name, port, protocol) in expected):
            verdict = "allowed" if allowed else "denied"
            wrong.append(f"{source.name} -> {destination.name}:{port}/{protocol} is {verdict}")
    assert not wrong, "\n".join(sorted(wrong))


@pytest.mark.parametrize(
    ("source", "destination", "port"),
    [
        ("bridge", "postgres", 5432),
        ("gateway", "postgres", 5432),
        ("execution", "redis", 6379),
        ("registry", "redis", 6379),
        ("execution", "gateway", 8080),
        ("bridge", "registry", 50051),
        ("registry", "execution", 50051),
        ("registry-migrate", "registry", 50051),
    ],
)
def test_a_flow_that_is_not_part_of_the_design_is_denied(
    rendered: dict[str, Docs], source: str, destination: str, port: int
) -> None:
    docs = rendered["dev"]
    namespace = target_namespace("dev")
    by_name = {e.name: e for e in endpoints_of(docs, namespace)}
    assert not connection_allowed(policies_of(docs, namespace), by_name[source], by_name[destination], port)


def test_outside_traffic_reaches_only_the_gateway_websocket_port(rendered: dict[str, Docs]) -> None:
    docs = rendered["prod"]
    namespace = target_namespace("prod")
    policies = policies_of(docs, namespace)
    reachable = {
        (pod.name, port)
        for pod in endpoints_of(docs, namespace)
        if pod.namespace == namespace
        for port, protocol in PORTS
        if connection_allowed(policies, INTERNET, pod, port, protocol)
    }
    assert reachable == {("gateway", 8080)}


def test_the_dev_datastores_accept_only_their_own_clients(rendered: dict[str, Docs]) -> None:
    docs = rendered["dev"]
    namespace = target_namespace("dev")
    policies = policies_of(docs, namespace)
    pods = {e.name: e for e in endpoints_of(docs, namespace)}
    clients = {
        (source, destination)
        for source in pods
        for destination, port in (("postgres", 5432), ("redis", 6379))
        if connection_allowed(policies, pods[source], pods[destination], port)
    }
    assert clients == {
        ("registry", "postgres"),
        ("registry-migrate", "postgres"),
        ("bridge", "redis"),
        ("gateway", "redis"),
    }


# --- the evaluator itself -------------------------------------------------------------------

A = Endpoint("a", "ns", {"app": "a"})
B = Endpoint("b", "ns", {"app": "b"})


def policy(spec: dict[str, object]) -> Policy:
    return {"metadata": {"name": "p", "namespace": "ns"}, "spec": spec}


def test_the_evaluator_lets_everything_through_when_no_policy_selects_the_pods() -> None:
    assert connection_allowed([], A, B, 1234)


def test_the_evaluator_isolates_only_the_directions_a_policy_names() -> None:
    ingress_only = [policy({"podSelector": {"matchLabels": {"app": "b"}}, "policyTypes": ["Ingress"]})]
    assert not connection_allowed(ingress_only, A, B, 1234)
    assert connection_allowed(ingress_only, B, A, 1234)


def test_the_evaluator_needs_both_egress_and_ingress_to_agree() -> None:
    egress = policy(
        {
            "podSelector": {"matchLabels": {"app": "a"}},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "b"}}}], "ports": [{"port": 80}]}],
        }
    )
    deny_b = policy({"podSelector": {"matchLabels": {"app": "b"}}, "policyTypes": ["Ingress"]})
    assert connection_allowed([egress], A, B, 80)
    assert not connection_allowed([egress], A, B, 81)
    assert not connection_allowed([egress, deny_b], A, B, 80)
