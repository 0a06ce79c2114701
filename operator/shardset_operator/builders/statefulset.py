"""StatefulSet <name>: the node pods and their volumes.

The pod template depends only on fields whose change needs a restart (image,
resources, scheduling). The read consistency reaches the container through env vars
resolved from the ConfigMap at container start, so switching it live changes no
template and restarts no pod, while a pod that restarts later comes up in the
current mode.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from shardset_operator.api.consistency import CONSISTENCY_KEY, STALENESS_KEY
from shardset_operator.api.models import ShardSetSpec
from shardset_operator.api.naming import (
    ADMIN_PORT,
    API_PORT,
    RAFT_PORT,
    TEMPLATE_HASH,
    TLS_MOUNT,
    WIRE_PORT,
    Names,
)
from shardset_operator.builders.configmap import BOOTSTRAP_KEY, STORE_CREATED_KEY

DATA_DIR = "/data"
CONFIG_DIR = "/etc/shardset"
NODE_UID = 10001  # the node image's user (node-image/Dockerfile)
GRACE_SECONDS = 30
# The node Secret's files: readable by the node's group (fsGroup) only.
TLS_FILE_MODE = 0o440


def node_args(names: Names | None = None) -> list[str]:
    """The node's command line; $(VAR) is expanded by the kubelet from the env below.

    The bound of bounded reads is not a flag: "no bound" is an empty value, which a flag
    cannot carry, so the node reads it from SHARDSET_MAX_STALENESS_MS itself (its
    documented default for --max-staleness-ms).

    With TLS (`names.tls`) the node reads its certificates from TLS_MOUNT (reloaded
    live), checks every peer's and client's identity against the store's name, and
    serves the admin API and the wire protocol on ports of their own.
    """
    tls = (
        [
            "--tls-dir",
            TLS_MOUNT,
            "--store",
            names.store_key,
            "--admin",
            f"0.0.0.0:{ADMIN_PORT}",
            "--wire",
            f"0.0.0.0:{WIRE_PORT}",
        ]
        if names is not None and names.tls
        else []
    )
    return [
        "--id-from-hostname",
        "--data-dir",
        DATA_DIR,
        "--peer",
        f"0.0.0.0:{RAFT_PORT}",
        "--api",
        f"0.0.0.0:{API_PORT}",
        "--bootstrap",
        f"{CONFIG_DIR}/{BOOTSTRAP_KEY}",
        "--log-format",
        "json",
        "--consistency",
        "$(SHARDSET_CONSISTENCY)",
        # Pods beyond the bootstrap map are new nodes: they wait to be added.
        "--allow-join",
        # A pod whose volume was lost finds this once the store exists, and rejoins.
        "--store-created-file",
        f"{CONFIG_DIR}/{STORE_CREATED_KEY}",
        *tls,
    ]


def _env(names: Names) -> list[dict[str, Any]]:
    def from_config(var: str, key: str) -> dict[str, Any]:
        ref = {"name": names.configmap, "key": key}
        return {"name": var, "valueFrom": {"configMapKeyRef": ref}}

    return [
        from_config("SHARDSET_CONSISTENCY", CONSISTENCY_KEY),
        from_config("SHARDSET_MAX_STALENESS_MS", STALENESS_KEY),
    ]


def default_affinity(names: Names) -> dict[str, Any]:
    """Prefer one node of a store per host: losing a host then costs each shard at most
    one replica. Preferred, not required, so small clusters still schedule."""
    return {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": names.selector()},
                    },
                }
            ]
        }
    }


def _container(names: Names, spec: ShardSetSpec, image: str) -> dict[str, Any]:
    # With TLS the kubelet probes over HTTPS (it does not check certificates; /healthz
    # and /readyz need no credentials). Without, the probe stays as it was (no roll).
    scheme = {"scheme": "HTTPS"} if names.tls else {}

    def probe(path: str, period: int, failures: int) -> dict[str, Any]:
        return {
            "httpGet": {"path": path, "port": "api", **scheme},
            "periodSeconds": period,
            "timeoutSeconds": 3,
            "failureThreshold": failures,
        }

    container: dict[str, Any] = {
        "name": "node",
        "image": image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["python", "-m", "shardset_node"],
        "args": node_args(names),
        "env": _env(names),
        "ports": [
            {"name": "raft", "containerPort": RAFT_PORT, "protocol": "TCP"},
            {"name": "api", "containerPort": API_PORT, "protocol": "TCP"},
            *_tls_ports(names),
        ],
        "volumeMounts": [
            {"name": "data", "mountPath": DATA_DIR},
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            # The whole Secret, not a subPath: the kubelet swaps renewed files in.
            *([{"name": "tls", "mountPath": TLS_MOUNT, "readOnly": True}] if names.tls else []),
        ],
        # Ready only when every shard this node holds has a known leader (/readyz).
        "readinessProbe": probe("/readyz", 5, 3),
        # The API answers once the WAL is replayed; the startup probe gives a long
        # replay five minutes before liveness may restart the pod.
        "startupProbe": probe("/healthz", 5, 60),
        "livenessProbe": probe("/healthz", 10, 6),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if spec.resources:
        container["resources"] = spec.resources
    return container


def _tls_ports(names: Names) -> list[dict[str, Any]]:
    if not names.tls:
        return []
    return [
        {"name": "wire", "containerPort": WIRE_PORT, "protocol": "TCP"},
        {"name": "admin", "containerPort": ADMIN_PORT, "protocol": "TCP"},
    ]


def _volumes(names: Names) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {
            "name": "config",
            # The bootstrap map and, once the store exists, its store-created
            # marker (written after the pods started: a mounted ConfigMap
            # follows changes, an env var or a fixed item list would not).
            "configMap": {
                "name": names.configmap,
                "items": [
                    {"key": BOOTSTRAP_KEY, "path": BOOTSTRAP_KEY},
                    {"key": STORE_CREATED_KEY, "path": STORE_CREATED_KEY},
                ],
                # store-created is absent until the store exists
                "optional": True,
            },
        },
        {"name": "tmp", "emptyDir": {}},
    ]
    if names.tls:
        secret = {"secretName": names.node_tls_secret, "defaultMode": TLS_FILE_MODE}
        volumes.append({"name": "tls", "secret": secret})
    return volumes


def _pod_spec(names: Names, spec: ShardSetSpec, image: str) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "terminationGracePeriodSeconds": GRACE_SECONDS,
        # Nodes never call the Kubernetes API: no token to steal from a node pod.
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": NODE_UID,
            "runAsGroup": NODE_UID,
            "fsGroup": NODE_UID,
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "affinity": spec.affinity if spec.affinity is not None else default_affinity(names),
        "containers": [_container(names, spec, image)],
        "volumes": _volumes(names),
    }
    if spec.tolerations is not None:
        pod["tolerations"] = spec.tolerations
    if spec.topology_spread_constraints is not None:
        pod["topologySpreadConstraints"] = spec.topology_spread_constraints
    if spec.node_selector is not None:
        pod["nodeSelector"] = spec.node_selector
    return pod


def _volume_claim(names: Names, spec: ShardSetSpec) -> dict[str, Any]:
    claim: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": spec.storage.size}},
    }
    if spec.storage.storage_class_name:
        claim["storageClassName"] = spec.storage.storage_class_name
    return {"metadata": {"name": "data", "labels": names.selector()}, "spec": claim}


def template_hash(statefulset: Mapping[str, Any]) -> str:
    """A hash of the pod template: the roll (plan/upgrade.py) compares it with the one
    last applied, kept in the TEMPLATE_HASH annotation."""
    template = statefulset["spec"]["template"]
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]


def statefulset(
    names: Names, spec: ShardSetSpec, image: str, replicas: int, partition: int = 0
) -> dict[str, Any]:
    """`replicas` comes from the store's membership (plan/members.py), `partition` from
    the rolling planner (plan/upgrade.py); the template's hash is kept in an annotation."""
    obj = _statefulset(names, spec, image, replicas, partition)
    obj["metadata"]["annotations"] = {TEMPLATE_HASH: template_hash(obj)}
    return obj


def _statefulset(
    names: Names, spec: ShardSetSpec, image: str, replicas: int, partition: int
) -> dict[str, Any]:
    retention = "Retain" if spec.storage.retain_on_delete else "Delete"
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {
            "name": names.statefulset,
            "namespace": names.namespace,
            "labels": names.labels(),
        },
        "spec": {
            "replicas": replicas,
            "serviceName": names.peers_service,
            # Every node of a new store must start together to elect the first leaders.
            "podManagementPolicy": "Parallel",
            # The operator releases one pod at a time by lowering the partition
            # (plan/upgrade.py), after moving its leaderships away.
            "updateStrategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"partition": partition},
            },
            "selector": {"matchLabels": names.selector()},
            "persistentVolumeClaimRetentionPolicy": {
                "whenDeleted": retention,
                # The operator shrinks the StatefulSet only after every replica moved
                # off the leaving nodes and they left the store (plan/members.py): their
                # volumes hold nothing, and a later scale-up must start empty.
                "whenScaled": "Delete",
            },
            "template": {
                "metadata": {"labels": names.labels()},
                "spec": _pod_spec(names, spec, image),
            },
            "volumeClaimTemplates": [_volume_claim(names, spec)],
        },
    }
