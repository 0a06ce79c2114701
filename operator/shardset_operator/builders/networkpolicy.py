"""The store's NetworkPolicy: its peer and admin ports admit only its pods and the operator.

The peer port (Raft) and the admin port are for the store's own nodes and the operator;
mutual TLS already refuses anyone else, and the policy keeps them from even connecting
(defence in depth, and less exposure of the TLS stack). The client API and the wire
protocol stay open to every pod: they authenticate each client themselves. Metrics are
served on the api port (unauthenticated /metrics) and so stay open too.

A NetworkPolicy is only enforced by a CNI that implements it (Calico, Cilium, ...); the
object exists either way (docs/security.md).
"""

from __future__ import annotations

from typing import Any

from shardset_operator.api.naming import ADMIN_PORT, API_PORT, RAFT_PORT, WIRE_PORT, Names
from shardset_operator.api.settings import PolicySettings


def _port(port: int) -> dict[str, Any]:
    return {"protocol": "TCP", "port": port}


def networkpolicy(names: Names, operator: PolicySettings) -> dict[str, Any]:
    same_store = {"podSelector": {"matchLabels": names.selector()}}
    the_operator = {
        "namespaceSelector": {
            "matchLabels": {"kubernetes.io/metadata.name": operator.operator_namespace}
        },
        "podSelector": {"matchLabels": dict(operator.operator_labels)},
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": names.name,
            "namespace": names.namespace,
            "labels": names.labels(),
        },
        "spec": {
            "podSelector": {"matchLabels": names.selector()},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [same_store, the_operator],
                    "ports": [_port(RAFT_PORT), _port(ADMIN_PORT)],
                },
                # clients (and Prometheus): they authenticate on these ports themselves
                {"ports": [_port(API_PORT), _port(WIRE_PORT)]},
            ],
        },
    }
