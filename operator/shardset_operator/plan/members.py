"""Which nodes belong to the store, which are joining or leaving (pure).

Pods are StatefulSet ordinals; membership is the shard map's node list, changed only
by the operator (add-node, remove-node). A scale-up starts the new pods first and adds
each one once it answers; a scale-down keeps the pods of the leaving nodes until no
replica is left on them, removes them from the store, and only then shrinks the
StatefulSet, so no pod holding data is ever deleted.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from shardset_operator.api.models import Unreachable
from shardset_proto.shardmap import ShardMap


@dataclass(frozen=True)
class MemberPlan:
    statefulset_replicas: int
    add: tuple[int, ...]  # answering pods to add to the store
    remove: tuple[int, ...]  # leaving members that hold nothing any more
    targets: tuple[int, ...]  # where replicas should live
    leaving: tuple[int, ...]  # members whose replicas must move away
    unreachable: tuple[int, ...]  # target members that do not answer (moves wait)


def plan_members(
    nodes: int,
    members: Collection[int],
    answering: Collection[int],
    gone: Collection[int],
    replicas: Mapping[int, Sequence[int]],
) -> MemberPlan:
    """`nodes`: spec.nodes; `members`: node ids in the shard map; `answering`: node ids
    that answered the operator; `gone`: members unreachable for longer than
    spec.failover.nodeGoneAfterSeconds (their replicas are rebuilt elsewhere)."""
    held = {n for holders in replicas.values() for n in holders}
    targets = tuple(sorted(n for n in members if n <= nodes and n not in gone))
    leaving = tuple(sorted(n for n in members if n > nodes or n in gone))
    return MemberPlan(
        statefulset_replicas=max(nodes, max(members, default=0)),
        add=tuple(i for i in range(1, nodes + 1) if i not in members and i in answering),
        remove=tuple(n for n in leaving if n > nodes and n not in held),
        targets=targets,
        leaving=leaving,
        unreachable=tuple(n for n in targets if n not in answering),
    )


def gone_nodes(
    unreachable_since: Mapping[int, float], now: float, after_seconds: float
) -> set[int]:
    """Members unreachable for longer than `after_seconds` (times in seconds)."""
    return {n for n, since in unreachable_since.items() if now - since >= after_seconds}


def track_unreachable(
    previous: list[Unreachable], live: ShardMap | None, answering: set[int], now: datetime
) -> list[Unreachable]:
    """Members not answering and since when (the first reconcile that missed them)."""
    if live is None:
        return previous
    since = {u.node: u.since for u in previous}
    return [
        Unreachable(node=n, since=since.get(n, now))
        for n in sorted(live.nodes)
        if n not in answering
    ]
