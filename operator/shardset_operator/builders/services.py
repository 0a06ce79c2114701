"""The two Services: headless <name>-peers for node identity, <name> for clients."""

from __future__ import annotations

from typing import Any

from shardset_operator.api.naming import API_PORT, RAFT_PORT, Names


def peers_service(names: Names) -> dict[str, Any]:
    """Gives every pod a stable DNS name; not-ready pods too, since a node must reach
    its peers to elect the leaders that make it ready."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": names.peers_service,
            "namespace": names.namespace,
            "labels": names.labels(),
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": names.selector(),
            "ports": [
                {"name": "raft", "port": RAFT_PORT, "targetPort": "raft", "protocol": "TCP"},
                {"name": "api", "port": API_PORT, "targetPort": "api", "protocol": "TCP"},
            ],
        },
    }


def client_service(names: Names) -> dict[str, Any]:
    """Ready nodes only; any node answers a client (redirecting writes to leaders)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": names.client_service,
            "namespace": names.namespace,
            "labels": names.labels(),
        },
        "spec": {
            "type": "ClusterIP",
            "selector": names.selector(),
            "ports": [{"name": "api", "port": API_PORT, "targetPort": "api", "protocol": "TCP"}],
        },
    }
