"""The handler's part of a reconcile: status patched only when it changed, every
condition transition announced once (Warnings for bad ones), metrics counted."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest
from prometheus_client import REGISTRY

from shardset_operator import handlers
from shardset_operator.api.settings import OperatorSettings
from shardset_operator.reconcile.context import Context

from .test_reconcile import FakeKube, FakeNodes, _body


class Events:
    def __init__(self) -> None:
        self.posted: list[tuple[str, str]] = []

    def info(self, _: Any, *, reason: str, message: str = "") -> None:
        self.posted.append(("Normal", reason))

    def warn(self, _: Any, *, reason: str, message: str = "") -> None:
        self.posted.append(("Warning", reason))


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> Events:
    ev = Events()
    monkeypatch.setattr(kopf, "info", ev.info)
    monkeypatch.setattr(kopf, "warn", ev.warn)
    return ev


def _runtime() -> tuple[handlers.Runtime, FakeKube, FakeNodes]:
    rt = handlers.Runtime(OperatorSettings())
    kube = FakeKube()
    nodes = FakeNodes(kube.calls)
    rt.ctx = Context(kube, nodes, "img")  # type: ignore[arg-type]
    return rt, kube, nodes


def _reconcile(rt: handlers.Runtime, body: dict[str, Any], trigger: str = "timer") -> kopf.Patch:
    patch = kopf.Patch()
    asyncio.run(handlers.reconcile(rt, trigger, body, patch))
    return patch


def test_status_is_patched_once_and_transitions_announced_once(events: Events) -> None:
    rt, _, _ = _runtime()
    body = _body()
    first = _reconcile(rt, body, "create")
    assert first.status["conditions"][0]["type"] == "Ready"
    announced = list(events.posted)
    assert ("Normal", "StoreReady") in announced
    # A second run with the same (stale) body: the object still lacks the status, so it
    # is patched again, but nothing new is announced.
    again = _reconcile(rt, body)
    assert again.status
    assert events.posted == announced
    # Once the object carries the status, an unchanged store patches nothing.
    body["status"] = dict(first.status)
    assert not _reconcile(rt, body)


def test_a_store_going_bad_is_a_warning(events: Events) -> None:
    rt, kube, nodes = _runtime()
    body = _body()
    body["status"] = dict(_reconcile(rt, body).status)
    events.posted.clear()
    nodes.down = {3}
    kube.ready = 2
    patch = _reconcile(rt, body)
    assert ("Warning", "ShardsLeaderless") in events.posted
    assert ("Warning", "NodesNotReady") in events.posted
    assert patch.status["shards"]["leaderless"] == 1


def test_reconciles_are_counted(events: Events) -> None:
    def count() -> float:
        return (
            REGISTRY.get_sample_value(
                "shardset_operator_reconciles_total", {"trigger": "timer", "result": "ok"}
            )
            or 0.0
        )

    rt, _, _ = _runtime()
    before = count()
    _reconcile(rt, _body())
    assert count() == before + 1
