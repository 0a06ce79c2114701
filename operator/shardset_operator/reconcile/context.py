"""What the phases of one reconcile share: the API clients, the run's fixed inputs, the
notes (Events) and failure the phases record, and the outcome handed to the handlers."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shardset_operator.api.consistency import ReadSetting
from shardset_operator.api.models import ShardSet, ShardSetStatus
from shardset_operator.api.naming import Names
from shardset_operator.clients.kube import Kube
from shardset_operator.clients.nodeclient import NodeClient
from shardset_operator.status.conditions import with_failure


@dataclass
class Context:
    """What handlers share: API clients and the operator's settings."""

    kube: Kube
    nodes: NodeClient
    node_image: str


@dataclass
class Outcome:
    status: ShardSetStatus
    notes: list[tuple[str, str]] = field(default_factory=list)  # (reason, message) events
    failure: str | None = None


class PhaseFailed(Exception):
    """A phase without whose result the reconcile cannot go on (the message says why)."""


@dataclass
class Run:
    """One reconcile: its fixed inputs, and what its phases record along the way."""

    body: dict[str, Any]
    sset: ShardSet
    names: Names
    now: datetime
    reads: ReadSetting  # the desired read consistency
    image: str  # the node image the pods should run
    notes: list[tuple[str, str]] = field(default_factory=list)  # (reason, message) events
    failure: str | None = None  # an apply that failed: later phases that act are skipped

    @staticmethod
    def of(body: dict[str, Any], node_image: str) -> Run:
        sset = ShardSet.from_body(body)
        return Run(
            body=body,
            sset=sset,
            names=Names(sset.name, sset.namespace, tls=sset.spec.tls.mode != "Disabled"),
            now=datetime.now(UTC),
            reads=ReadSetting.of_spec(sset.spec.consistency),
            image=sset.spec.image or node_image,
        )

    def failed(self, message: str) -> Outcome:
        """The outcome of a run that could not go on: the previous status, with
        Progressing=False/ReconcileFailed."""
        sset = self.sset
        status = with_failure(sset.status, sset.generation, message, datetime.now(UTC))
        return Outcome(status=status, notes=self.notes, failure=message)
