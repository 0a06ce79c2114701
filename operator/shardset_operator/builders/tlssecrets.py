"""The store's TLS Secrets: `<name>-ca`, `<name>-node-tls`, `<name>-operator-tls`.

Their contents come from plan/certs.py (or, with spec.tls.mode Secrets, from the user's
Secrets); this only wraps them as objects to apply. The node Secret is mounted whole
(not through subPath) so the kubelet swaps updated files into running pods.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from shardset_operator.api.naming import Names

# The operator's Secret has exactly the kubernetes.io/tls layout (tools and cert-manager
# users recognise it); the CA and node Secrets hold other keys, so they are Opaque.
TLS_TYPE = "kubernetes.io/tls"
OPAQUE = "Opaque"


def secret(
    names: Names, name: str, data: Mapping[str, bytes], kind: str = OPAQUE
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": names.namespace,
            "labels": {**names.labels(), "app.kubernetes.io/component": "tls"},
        },
        "type": kind,
        "data": {k: base64.b64encode(v).decode() for k, v in sorted(data.items())},
    }


def ca_secret(names: Names, data: Mapping[str, bytes]) -> dict[str, Any]:
    """Never mounted by a pod: only the operator reads the CA's key."""
    return secret(names, names.ca_secret, data)


def node_secret(names: Names, data: Mapping[str, bytes]) -> dict[str, Any]:
    return secret(names, names.node_tls_secret, data)


def operator_secret(names: Names, data: Mapping[str, bytes]) -> dict[str, Any]:
    return secret(names, names.operator_tls_secret, data, TLS_TYPE)
