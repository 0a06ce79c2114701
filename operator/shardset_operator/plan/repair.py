"""Membership repairs (pure): replicas a node lost with its volume, and the metadata
group's members.

A node whose volume was lost comes back empty and rejoins (it does not bootstrap: its
empty log must never count as a voter's). The groups still list it as a voter of
shards it no longer holds; it is removed from them (the rest of each group is a
majority) and the rebalancer then adds replicas back, as learners first. Its copy of
the metadata group is handled the same way: removed, re-created empty, re-added as a
learner. Learners of the metadata group are promoted until it has
min(META_VOTERS, nodes) voters, so it survives as many failures as the shards do.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from shardset_operator.plan.members import MemberPlan
from shardset_operator.plan.moves import CATCH_UP_LAG, META, ShardView, Step, call
from shardset_proto.admin import AddNode, CreateReplica, DropReplica, Promote, RemoveReplica
from shardset_proto.shardmap import NodeAddress
from shardset_proto.status import META_GROUP, GroupStatus, NodeStatus

META_VOTERS = 5  # as the node keeps it (shardset_node.config.META_VOTERS)


@dataclass(frozen=True)
class MetaView:
    leader: int | None
    voters: frozenset[int] = frozenset()
    learners: frozenset[int] = frozenset()
    hosts: frozenset[int] = frozenset()
    lag: Mapping[int, int] = field(default_factory=dict)

    @property
    def members(self) -> frozenset[int]:
        return self.voters | self.learners


def meta_view(reports: Mapping[int, NodeStatus | None]) -> MetaView:
    hosts = set()
    leader: tuple[int, GroupStatus] | None = None
    for node, report in reports.items():
        entry = report.meta if report is not None else None
        if entry is None:
            continue
        hosts.add(node)
        if entry.is_leader:
            leader = (node, entry)
    if leader is None:
        return MetaView(None, hosts=frozenset(hosts))
    node, entry = leader
    return MetaView(
        node,
        frozenset(entry.voters),
        frozenset(entry.learners),
        frozenset(hosts),
        entry.lags(),
    )


def join_step(node: int, meta: MetaView, address: NodeAddress) -> Step:
    """Make `node` a member of the store (and of the metadata group, as a learner)."""
    if node not in meta.hosts and node not in meta.members:
        text = f"create node {node}'s metadata replica"
        return call(CreateReplica(shard=META_GROUP), node, text)
    body = AddNode(
        node=node,
        peer=address.peer,
        api=address.api,
        admin=address.admin or None,
        wire=address.wire or None,
    )
    return call(body, META, f"add node {node} to the store")


def lost_replica_step(
    views: Mapping[int, ShardView], answering: Collection[int], busy: tuple[int, int] | None
) -> Step | None:
    """A member of a group that answers the operator but holds no copy of the group
    (its volume was lost): remove it, so the group can be given a real replica.
    `busy`: (shard, target) of the move in progress, whose target is still being made."""
    for s, v in sorted(views.items()):
        if v.leader is None:
            continue
        for n in sorted(v.members - v.hosts):
            if n in answering and (s, n) != busy:
                return call(
                    RemoveReplica(shard=s, node=n),
                    v.leader,
                    f"remove node {n} from shard {s}: it lost its copy",
                )
    return None


def meta_step(
    meta: MetaView,
    plan: MemberPlan,
    answering: Collection[int],
    addresses: Mapping[int, NodeAddress],
) -> Step | None:
    if meta.leader is None:
        return None
    for n in plan.targets:
        if n not in answering or n in meta.hosts:
            continue
        if n in meta.members:
            return call(
                RemoveReplica(shard=META_GROUP, node=n),
                META,
                f"remove node {n} from the metadata group: it lost its copy",
            )
        return join_step(n, meta, addresses[n])
    for n in plan.targets:
        if n in answering and n in meta.hosts and n not in meta.members and n in addresses:
            return join_step(n, meta, addresses[n])
    wanted = min(META_VOTERS, len(plan.targets))
    serving = meta.voters & set(plan.targets)
    if len(serving) < wanted:
        for n in sorted(meta.learners & set(plan.targets)):
            if meta.lag.get(n, CATCH_UP_LAG + 1) <= CATCH_UP_LAG:
                body = Promote(shard=META_GROUP, node=n)
                return call(body, META, f"make node {n} a metadata voter")
    for n in sorted(meta.voters - set(plan.targets)):
        if n not in answering and len(serving) >= wanted and n != meta.leader:
            return call(
                RemoveReplica(shard=META_GROUP, node=n),
                META,
                f"remove gone node {n} from the metadata group",
            )
    return None


def orphan_step(
    reports: Mapping[int, NodeStatus | None], live_shards: Collection[int]
) -> Step | None:
    """A replica of a shard the map no longer has (recovered elsewhere while this node
    was away): drop it. Ids above the map's highest are shards being created (a split
    or a recovery in progress) and are left alone."""
    top = max(live_shards, default=0)
    for node, report in sorted(reports.items()):
        hosted = report.shards if report is not None else {}
        for gid in sorted(hosted):
            if gid not in live_shards and gid < top:
                return call(
                    DropReplica(shard=gid),
                    node,
                    f"drop node {node}'s replica of removed shard {gid}",
                )
    return None
