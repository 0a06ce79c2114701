"""What one observation of a store holds: the StatefulSet, its pods and what the nodes
said. Plain data: `clients/` fills it in, `plan/`, `status/` and `reconcile/` read it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from shardset_proto.shardmap import ShardMap
from shardset_proto.status import NodeStatus


@dataclass(frozen=True)
class PodState:
    name: str
    ready: bool
    terminating: bool
    revision: str | None = None  # controller-revision-hash: the template it runs


@dataclass(frozen=True)
class StatefulSetState:
    replicas: int
    ready: int
    updated: int
    current_revision: str | None
    update_revision: str | None
    observed_generation: int | None
    generation: int | None
    partition: int = 0  # rollingUpdate.partition: ordinals below it keep the old template
    annotations: dict[str, str] | None = None


@dataclass(frozen=True)
class NodeViews:
    """What the nodes said: status reports, who did not answer, the newest shard map."""

    reports: Mapping[int, NodeStatus | None]  # node id -> GET /v1/status, None: no answer
    errors: Mapping[int, str]  # node id -> why it did not answer
    live_map: ShardMap | None  # None: no node answered with one

    @property
    def answering(self) -> set[int]:
        return {i for i, r in self.reports.items() if r is not None}

    def trusted_map(self, known_epoch: int | None) -> ShardMap | None:
        """The newest shard map the nodes gave, unless it is older than one already seen
        (a node cut off from the metadata group): nothing is sized or planned from it."""
        live = self.live_map
        if live is None or (known_epoch is not None and live.epoch < known_epoch):
            return None
        return live


@dataclass(frozen=True)
class Seen:
    statefulset: StatefulSetState | None
    ready_nodes: int
    nodes: NodeViews
    pods: tuple[PodState, ...] = ()

    @property
    def reports(self) -> Mapping[int, NodeStatus | None]:
        return self.nodes.reports

    @property
    def errors(self) -> Mapping[int, str]:
        return self.nodes.errors
