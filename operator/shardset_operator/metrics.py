"""Prometheus metrics of the operator (served on SHARDSET_METRICS_PORT, default 9090)."""

from __future__ import annotations

from collections import Counter as Tally

from prometheus_client import Counter, Gauge, Histogram

from shardset_operator.api.models import ShardSetStatus

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
