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


class SettingsError(ValueError):
    """An environment variable of the operator has a value it cannot use."""


@dataclass(frozen=True)
class OperatorSettings:
    node_image: str = DEFAULT_NODE_IMAGE
    watch_namespaces: tuple[str, ...] = ()  # empty: every namespace
    peering: str = "shardset-operator"
    interval_s: float = 10.0
    metrics_port: int = 9090
    log_format: str = "json"
    # Kopf pauses every replica of equal priority, so each process draws its own
    # unless SHARDSET_PEERING_PRIORITY pins it: the highest replica works, the rest
    # stand by until its peering record expires.
    peering_priority: int = field(default_factory=lambda: random.SystemRandom().randint(1, 2**30))

    @property
    def clusterwide(self) -> bool:
        return not self.watch_namespaces

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
            **_priority(env),
        )


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
