"""The Secret of a ShardSetUser: what an application mounts to reach the store.

Named after the user and owned by the ShardSetUser (deleted with it). Its keys follow the
Kubernetes TLS Secret layout (`ca.crt`, `tls.crt`, `tls.key`: a client mounts it as the
TLS directory shardset_proto.tlsfiles reads), plus `token` (the bearer token) and where
to connect: `url` (the client Service's HTTPS API) and `wire` (host:port of the binary
protocol). Without a CA key (spec.tls.mode Secrets) the user gets a token only.
"""

from __future__ import annotations

import base64
from typing import Any

from shardset_operator.api.models import API_VERSION
from shardset_operator.api.naming import API_PORT, WIRE_PORT, Names
from shardset_operator.api.usermodels import USER_KIND, ShardSetUser
from shardset_proto.identity import Identity


def endpoints(names: Names) -> dict[str, str]:
    """The client Service's addresses, as the Secret's `url` and `wire` keys hold them."""
    host = f"{names.client_service}.{names.namespace}.svc"
    return {"url": f"https://{host}:{API_PORT}", "wire": f"{host}:{WIRE_PORT}"}


def user_secret(
    user: ShardSetUser,
    names: Names,
    bundle: bytes,
    token: str,
    cert: tuple[bytes, bytes] | None,
) -> dict[str, Any]:
    """The whole Secret (server-side applied); `cert` is (tls.crt, tls.key) or None."""
    data: dict[str, bytes] = {"ca.crt": bundle, "token": token.encode()}
    if cert is not None:
        data["tls.crt"], data["tls.key"] = cert
    data.update({k: v.encode() for k, v in endpoints(names).items()})
    data["identity"] = Identity.user(names.store_key, user.name).uri.encode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": user.name,
            "namespace": user.namespace,
            "labels": {
                "app.kubernetes.io/name": "shardset",
                "app.kubernetes.io/instance": names.name,
                "app.kubernetes.io/component": "user",
                "app.kubernetes.io/managed-by": "shardset-operator",
            },
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": USER_KIND,
                    "name": user.name,
                    "uid": user.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "data": {k: base64.b64encode(v).decode() for k, v in sorted(data.items())},
    }
