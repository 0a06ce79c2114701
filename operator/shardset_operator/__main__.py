"""`python -m shardset_operator`: run the operator.

Environment: WATCH_NAMESPACE (comma-separated; unset: all namespaces),
SHARDSET_PEERING (Kopf peering object, default shardset-operator), SHARDSET_NODE_IMAGE,
SHARDSET_RECONCILE_INTERVAL (seconds, default 10), SHARDSET_METRICS_PORT (default 9090),
SHARDSET_LOG_FORMAT (json or console), SHARDSET_PEERING_PRIORITY (default: random per
process, so that of several replicas exactly one works). Liveness: http://0.0.0.0:8080/healthz.
"""

from __future__ import annotations

import os
import sys

import kopf
import structlog

from shardset_operator import logs
from shardset_operator.api.settings import OperatorSettings, SettingsError
from shardset_operator.handlers import register


def main() -> int:
    try:
        settings = OperatorSettings.from_env(os.environ)
    except SettingsError as e:
        print(f"shardset-operator: {e}", file=sys.stderr)
        return 2
    logs.configure(settings.log_format)
    registry = kopf.OperatorRegistry()
    register(registry, settings)
    structlog.get_logger("shardset_operator").info(
        "starting",
        peering=settings.peering,
        priority=settings.peering_priority,
        clusterwide=settings.clusterwide,
    )
    kopf.run(
        registry=registry,
        clusterwide=settings.clusterwide,
        namespaces=list(settings.watch_namespaces),
        peering_name=settings.peering,
        liveness_endpoint=settings.liveness_endpoint,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
