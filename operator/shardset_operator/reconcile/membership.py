"""Phase 3 (pure): the store's members as the trusted shard map says, who stopped
answering and since when, who is gone for good, and the StatefulSet's size."""

from __future__ import annotations

from dataclasses import dataclass

from shardset_operator.api.models import Unreachable
from shardset_operator.api.observed import Seen
from shardset_operator.plan.members import gone_nodes, plan_members, track_unreachable
from shardset_operator.reconcile.bootstrap import Bootstrap
from shardset_operator.reconcile.context import Run
from shardset_proto.shardmap import ShardMap


@dataclass(frozen=True)
class Membership:
    live: ShardMap | None  # the newest shard map, None when none can be trusted
    unreachable: list[Unreachable]
    members: list[int]
    gone: set[int]  # unreachable past spec.failover.nodeGoneAfterSeconds
    replicas: dict[int, tuple[int, ...]]  # the live map's replicas ({} without one)
    size: int  # the StatefulSet's replicas to apply


def plan_membership(run: Run, boot: Bootstrap, seen: Seen) -> Membership:
    sset, now = run.sset, run.now
    live = seen.nodes.trusted_map(sset.status.map_epoch)
    unreachable = track_unreachable(sset.status.unreachable, live, seen.nodes.answering, now)
    members = sorted(live.nodes) if live is not None else boot.known
    gone = gone_nodes(
        {u.node: u.since.timestamp() for u in unreachable},
        now.timestamp(),
        sset.spec.failover.node_gone_after_seconds,
    )
    replicas = live.replicas if live is not None else {}
    plan = plan_members(sset.spec.nodes, members, seen.nodes.answering, gone, replicas)
    size = boot.shape.replicas
    if boot.recorded is not None:
        # Never shrink on a guess: without a trusted map, keep every pod there is.
        running = seen.statefulset.replicas if seen.statefulset is not None else 0
        size = plan.statefulset_replicas if live is not None else max(size, running)
    return Membership(live, unreachable, members, gone, replicas, size)
