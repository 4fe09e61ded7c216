"""A small evaluator of Kubernetes NetworkPolicy semantics, to test policies as data.

It answers one question: may ``source`` open a connection to ``destination`` on a port?
Both ends must agree — the source's egress policies and the destination's ingress
policies — following the API's rules: a pod selected by no policy of a direction is not
isolated in that direction; once selected, only what some rule allows gets through.
Peers outside the cluster (``Endpoint.external``) match only ``ipBlock`` peers or rules
without peers. Named ports are not supported (the manifests use numbers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Policy = dict[str, Any]


@dataclass(frozen=True)
class Endpoint:
    name: str
    namespace: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    external: bool = False

    @property
    def namespace_labels(self) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": self.namespace}


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """``metav1.LabelSelector`` semantics; an empty selector selects everything."""
    selector = selector or {}
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not ok:
            return False
    return True


def _peer_matches(peer: dict[str, Any], endpoint: Endpoint, policy_namespace: str) -> bool:
    if "ipBlock" in peer:
        return endpoint.external
    if endpoint.external:
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], endpoint.namespace_labels):
            return False
    elif endpoint.namespace != policy_namespace:
        return False
    return selects(peer.get("podSelector"), endpoint.labels)


def _port_matches(rule: dict[str, Any], port: int, protocol: str) -> bool:
    ports = rule.get("ports")
    if not ports:
        return True
    for entry in ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        if "port" not in entry:
            return True
        if not isinstance(entry["port"], int):
            raise ValueError(f"named port {entry['port']!r} is not supported by this evaluator")
        if entry["port"] <= port <= entry.get("endPort", entry["port"]):
            return True
    return False


def _policy_types(policy: Policy) -> list[str]:
    spec = policy["spec"]
    if "policyTypes" in spec:
        return list(spec["policyTypes"])
    return ["Ingress", "Egress"] if "egress" in spec else ["Ingress"]


def _isolating(policies: list[Policy], pod: Endpoint, direction: str) -> list[Policy]:
    return [
        p
        for p in policies
        if p["metadata"].get("namespace", "") == pod.namespace
        and direction in _policy_types(p)
        and selects(p["spec"]["podSelector"], pod.labels)
    ]


def _allowed(
    policies: list[Policy], pod: Endpoint, peer: Endpoint, port: int, protocol: str, direction: str
) -> bool:
    if pod.external:
        return True  # NetworkPolicies govern pods only
    isolating = _isolating(policies, pod, direction)
    if not isolating:
        return True
    rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for policy in isolating:
        for rule in policy["spec"].get(rules_key, []):
            peers = rule.get(peers_key)
            if not _port_matches(rule, port, protocol):
                continue
            if not peers or any(_peer_matches(p, peer, pod.namespace) for p in peers):
                return True
    return False


def connection_allowed(
    policies: list[Policy], source: Endpoint, destination: Endpoint, port: int, protocol: str = "TCP"
) -> bool:
    return _allowed(policies, source, destination, port, protocol, "Egress") and _allowed(
        policies, destination, source, port, protocol, "Ingress"
    )
