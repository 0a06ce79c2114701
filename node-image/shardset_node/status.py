"""What a node reports about itself, as the typed reports of the contract: its status
(`/v1/status`: every group's Raft state, the default read consistency) and its view of
the shard map (`/v1/shardmap`)."""

from __future__ import annotations

from typing import Literal

from shardset_node.core import Node
from shardset_node.reads import ReadPath
from shardset_node.replication.group import ReplicaGroup
from shardset_node.replication.machines import ShardMachine
from shardset_node.storage.diskspace import disk_space
from shardset_proto.status import (
    ConsistencyView,
    DiskView,
    FollowerProgress,
    GroupRole,
    GroupStatus,
    NodeStatus,
    ShardMapView,
    group_key,
)
from shardset_raft import Role
from shardset_raft.progress import ProgressState

_ROLES = {
    Role.FOLLOWER: GroupRole.FOLLOWER,
    Role.PRE_CANDIDATE: GroupRole.PRE_CANDIDATE,
    Role.CANDIDATE: GroupRole.CANDIDATE,
    Role.LEADER: GroupRole.LEADER,
}
_STATES: dict[ProgressState, Literal["probe", "replicate", "snapshot"]] = {
    ProgressState.PROBE: "probe",
    ProgressState.REPLICATE: "replicate",
    ProgressState.SNAPSHOT: "snapshot",
}


def shardmap_view(node: Node) -> ShardMapView:
    node.check_alive()  # a dead loop's view of the leaders is stale: not served
    # A core stalled on a full disk does not hear of new leaders either: none known
    # (clients then ask another node) rather than a leader that may have changed.
    stalled = node.host.disk_stall is not None
    leaders = {gid: 0 if stalled else g.raft.leader for gid, g in node.host.groups.items() if gid}
    return ShardMapView.of(node.meta.map, leaders)


def status(node: Node, reads: ReadPath) -> NodeStatus:
    """The node's report; a 503 once its Raft loop stopped (the roles it would report
    are stale), so the operator counts it unavailable."""
    node.check_alive()
    policy = reads.policy
    return NodeStatus(
        node=node.id,
        origin="rejoin" if node.origin == "rejoin" else "bootstrap",
        epoch=node.meta.map.epoch,
        consistency=ConsistencyView(mode=policy.mode, maxStalenessMs=policy.max_staleness_ms),
        groups={
            group_key(gid): _with_checks(
                node, g, _group(node.id, g, stalled=node.host.disk_stall is not None)
            )
            for gid, g in sorted(node.host.groups.items())
        },
        disk=disk_view(node),
        tls=None if node.tls is None else node.tls.report(),  # issue 16: what it serves now
    )


def disk_view(node: Node) -> DiskView:
    space = disk_space(node.cfg.data_dir)
    stall = node.host.disk_stall
    reason = stall.reason if stall else node.low_space
    return DiskView(
        full=reason is not None,
        stalled=stall is not None,
        reason=reason,
        since=stall.since if stall else None,
        freeBytes=space.free_bytes if space else None,
        totalBytes=space.total_bytes if space else None,
        minFreeBytes=node.cfg.min_free_bytes,
    )


def _group(me: int, g: ReplicaGroup, *, stalled: bool = False) -> GroupStatus:
    """One group's report. A core stalled on a full disk is frozen: it claims no
    leadership (the other replicas elect a leader meanwhile) and names no leader."""
    r = g.raft
    followers = None
    if stalled:
        role, leader = GroupRole.FOLLOWER, 0
    else:
        role, leader = _ROLES[r.role], r.leader
    if role == GroupRole.LEADER:
        last = r.log.last_index()
        followers = {
            p: FollowerProgress(match=pr.match, lag=last - pr.match, state=_STATES[pr.state])
            for p, pr in r.progress.items()
            if p != me
        }
    return GroupStatus(
        role=role,
        term=r.term,
        leader=leader,
        commit=r.committed,
        applied=r.applied,
        last_index=r.log.last_index(),
        voters=sorted(r.conf.voters),
        learners=sorted(r.conf.learners),
        followers=followers,
        recovering=r.recovering or None,  # 0: not recovering (left out of the JSON)
    )


def _with_checks(node: Node, g: ReplicaGroup, report: GroupStatus) -> GroupStatus:
    """Issue 15's fields: whether this replica is corrupt, and the last consistency check
    it ran as the shard's leader (both left out of the JSON when there is nothing)."""
    corrupt = node.engine.corrupt.get(g.id)
    check = g.machine.last_check if isinstance(g.machine, ShardMachine) else None
    if corrupt is None and check is None:
        return report
    return report.model_copy(update={"corrupt": corrupt, "consistency_check": check})
