"""The operator's own settings, from its environment (the Helm chart sets these)."""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from shardset_operator.api.models import DEFAULT_NODE_IMAGE

HEALTH_PORT = 8080
HEALTH_PATH = "/healthz"
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^([a-z0-9.-]{1,253}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


class SettingsError(ValueError):
    """An environment variable of the operator has a value it cannot use."""


DEFAULT_OPERATOR_LABELS = (("app.kubernetes.io/name", "shardset-operator"),)


@dataclass(frozen=True)
class PolicySettings:
    """Where the operator's pods are, so a store's NetworkPolicy can admit them."""

    operator_namespace: str
    operator_labels: tuple[tuple[str, str], ...] = DEFAULT_OPERATOR_LABELS


@dataclass(frozen=True)
class OperatorSettings:
    node_image: str = DEFAULT_NODE_IMAGE
    watch_namespaces: tuple[str, ...] = ()  # empty: every namespace
    peering: str = "shardset-operator"
    interval_s: float = 10.0
    metrics_port: int = 9090
    log_format: str = "json"
    # Each store gets a NetworkPolicy admitting only its pods and the operator's to its
    # peer and admin ports (chart value networkPolicy.enabled). The operator's namespace
    # (POD_NAMESPACE, from the downward API) and pod labels are what the policy admits.
    network_policy: bool = True
    operator_namespace: str = ""
    operator_labels: tuple[tuple[str, str], ...] = DEFAULT_OPERATOR_LABELS
    # Kopf pauses every replica of equal priority, so each process draws its own
    # unless SHARDSET_PEERING_PRIORITY pins it: the highest replica works, the rest
    # stand by until its peering record expires.
    peering_priority: int = field(default_factory=lambda: random.SystemRandom().randint(1, 2**30))

    @property
    def clusterwide(self) -> bool:
        return not self.watch_namespaces

    @property
    def policy(self) -> PolicySettings | None:
        """What the stores' NetworkPolicies admit; None: no policies (turned off, or the
        operator runs outside a cluster and so has no namespace to admit)."""
        if not self.network_policy or not self.operator_namespace:
            return None
        return PolicySettings(self.operator_namespace, self.operator_labels)

    @property
    def liveness_endpoint(self) -> str:
        return f"http://0.0.0.0:{HEALTH_PORT}{HEALTH_PATH}"

    @staticmethod
    def from_env(env: Mapping[str, str]) -> OperatorSettings:
        namespaces = tuple(
            n.strip() for n in env.get("WATCH_NAMESPACE", "").split(",") if n.strip()
        )
        for ns in namespaces:
            if not _NAMESPACE.match(ns):
                raise SettingsError(f"WATCH_NAMESPACE: {ns!r} is not a namespace name")
        return OperatorSettings(
            node_image=env.get("SHARDSET_NODE_IMAGE") or DEFAULT_NODE_IMAGE,
            watch_namespaces=namespaces,
            peering=env.get("SHARDSET_PEERING") or "shardset-operator",
            interval_s=_number(env, "SHARDSET_RECONCILE_INTERVAL", 10.0, 1.0, 3600.0),
            metrics_port=int(_number(env, "SHARDSET_METRICS_PORT", 9090, 1, 65535)),
            log_format=_choice(env, "SHARDSET_LOG_FORMAT", "json", ("json", "console")),
            network_policy=_choice(env, "SHARDSET_NETWORK_POLICY", "true", ("true", "false"))
            == "true",
            operator_namespace=_namespace(env, "POD_NAMESPACE"),
            operator_labels=_labels(env, "SHARDSET_OPERATOR_POD_LABELS"),
            **_priority(env),
        )


def _namespace(env: Mapping[str, str], key: str) -> str:
    value = env.get(key, "").strip()
    if value and not _NAMESPACE.match(value):
        raise SettingsError(f"{key}: {value!r} is not a namespace name")
    return value


def _labels(env: Mapping[str, str], key: str) -> tuple[tuple[str, str], ...]:
    """`k=v,k=v`: the operator pods' labels (the chart passes its selector labels)."""
    raw = env.get(key, "").strip()
    if not raw:
        return DEFAULT_OPERATOR_LABELS
    pairs: list[tuple[str, str]] = []
    for item in raw.split(","):
        k, eq, v = item.strip().partition("=")
        if not eq or not _LABEL_KEY.match(k) or not _LABEL_VALUE.match(v):
            raise SettingsError(f"{key}: {item.strip()!r} is not a label key=value")
        pairs.append((k, v))
    return tuple(pairs)


def _priority(env: Mapping[str, str]) -> dict[str, int]:
    if not env.get("SHARDSET_PEERING_PRIORITY"):
        return {}
    return {"peering_priority": int(_number(env, "SHARDSET_PEERING_PRIORITY", 0, 0, 2**31 - 1))}


def _number(env: Mapping[str, str], key: str, default: float, lo: float, hi: float) -> float:
    raw = env.get(key)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{key}: {raw!r} is not a number") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{key}: {raw} is outside [{lo:g}, {hi:g}]")
    return value


def _choice(env: Mapping[str, str], key: str, default: str, allowed: tuple[str, ...]) -> str:
    value = env.get(key) or default
    if value not in allowed:
        raise SettingsError(f"{key}: {value!r} is not one of {', '.join(allowed)}")
    return value
