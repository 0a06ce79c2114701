"""The two Services: headless <name>-peers for node identity, <name> for clients.

With TLS the client Service exposes the client ports only (api and wire): the admin
and Raft ports are reached through the peers Service's pod names, which the chart's
NetworkPolicy limits to the operator and the store's own pods."""

from __future__ import annotations

from typing import Any

from shardset_operator.api.naming import ADMIN_PORT, API_PORT, RAFT_PORT, WIRE_PORT, Names


def _port(name: str, port: int) -> dict[str, Any]:
    return {"name": name, "port": port, "targetPort": name, "protocol": "TCP"}


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
            "ports": [_port("raft", RAFT_PORT), _port("api", API_PORT)]
            + ([_port("wire", WIRE_PORT), _port("admin", ADMIN_PORT)] if names.tls else []),
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
            "ports": [_port("api", API_PORT)] + ([_port("wire", WIRE_PORT)] if names.tls else []),
        },
    }
