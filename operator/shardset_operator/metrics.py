"""Prometheus metrics of the operator (served on SHARDSET_METRICS_PORT, default 9090)."""

from __future__ import annotations

import contextlib
from collections import Counter as Tally

from prometheus_client import Counter, Gauge, Histogram

from shardset_operator.api.models import ShardSetStatus, TlsStatus

RECONCILES = Counter(
    "shardset_operator_reconciles_total",
    "Reconciles of ShardSets, by trigger and result (ok, error).",
    ["trigger", "result"],
)
RECONCILE_SECONDS = Histogram(
    "shardset_operator_reconcile_duration_seconds",
    "Time one reconcile took, by trigger.",
    ["trigger"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SHARDSETS = Gauge(
    "shardset_operator_shardsets",
    "ShardSets this replica reconciles, by condition type and status.",
    ["condition", "status"],
)

CERT_NOT_AFTER = Gauge(
    "shardset_operator_cert_not_after_seconds",
    "When a ShardSet's certificates expire (Unix time): kind ca (the earliest CA "
    "trusted), node (the earliest node certificate), operator (its client certificate).",
    ["shardset", "namespace", "kind"],
)
CERT_KINDS = ("ca", "node", "operator")

# The last conditions seen per ShardSet uid: only to count them for the gauge above.
_latest: dict[str, dict[str, str]] = {}


def record_conditions(uid: str, status: ShardSetStatus | None) -> None:
    """Remember a ShardSet's conditions (None: it is gone) and refresh the gauge."""
    if status is None:
        _latest.pop(uid, None)
    else:
        _latest[uid] = {c.type: c.status for c in status.conditions}
    tally: Tally[tuple[str, str]] = Tally()
    for conditions in _latest.values():
        tally.update(conditions.items())
    for kind in ("Ready", "Progressing", "Degraded"):
        for value in ("True", "False", "Unknown"):
            SHARDSETS.labels(kind, value).set(tally[(kind, value)])


def record_certs(namespace: str, name: str, tls: TlsStatus | None) -> None:
    """Expose a ShardSet's certificate expiries (None: no TLS, or the ShardSet is gone)."""
    expiries = (
        (tls.ca_not_after, tls.node_not_after, tls.operator_not_after) if tls else (None,) * 3
    )
    for kind, when in zip(CERT_KINDS, expiries, strict=True):
        if when is None:
            with contextlib.suppress(KeyError):  # never set: nothing to remove
                CERT_NOT_AFTER.remove(name, namespace, kind)
        else:
            CERT_NOT_AFTER.labels(name, namespace, kind).set(when.timestamp())
