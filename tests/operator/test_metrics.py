"""The shardsets-by-condition gauge counts each ShardSet once and forgets deleted ones."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from prometheus_client import REGISTRY

from shardset_operator import metrics
from shardset_operator.api.models import Condition, ConditionStatus, ShardSetStatus


def _status(ready: ConditionStatus) -> ShardSetStatus:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return ShardSetStatus(
        conditions=[Condition(type="Ready", status=ready, reason="X", last_transition_time=now)]
    )


def _gauge(status: str) -> float | None:
    return REGISTRY.get_sample_value(
        "shardset_operator_shardsets", {"condition": "Ready", "status": status}
    )


def test_gauge_follows_conditions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_latest", {})  # other tests' ShardSets do not count
    metrics.record_conditions("a", _status("True"))
    metrics.record_conditions("b", _status("False"))
    metrics.record_conditions("a", _status("True"))
    assert (_gauge("True"), _gauge("False")) == (1, 1)
    metrics.record_conditions("b", _status("True"))
    assert (_gauge("True"), _gauge("False")) == (2, 0)
    metrics.record_conditions("a", None)
    metrics.record_conditions("b", None)
    assert _gauge("True") == 0
