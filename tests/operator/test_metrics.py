"""The shardsets-by-condition gauge counts each ShardSet once and forgets deleted ones."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from prometheus_client import REGISTRY

from shardset_operator import metrics
from shardset_operator.api.models import Condition, ConditionStatus, ShardSetStatus, TlsStatus


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


def _expiry(kind: str) -> float | None:
    return REGISTRY.get_sample_value(
        "shardset_operator_cert_not_after_seconds",
        {"shardset": "kv", "namespace": "prod", "kind": kind},
    )


def test_certificate_expiries_are_exposed_and_forgotten() -> None:
    ca, node = datetime(2036, 1, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)
    tls = TlsStatus(mode="Operator", ca_not_after=ca, node_not_after=node)
    metrics.record_certs("prod", "kv", tls)
    assert (_expiry("ca"), _expiry("node")) == (ca.timestamp(), node.timestamp())
    assert _expiry("operator") is None  # not known: not exposed as 0 (which would alert)
    metrics.record_certs("prod", "kv", None)
    assert (_expiry("ca"), _expiry("node")) == (None, None)
