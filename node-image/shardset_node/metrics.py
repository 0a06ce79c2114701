"""Prometheus metrics of a node, read from its live state at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from shardset_node.core import Node
from shardset_node.reads import ReadPath
from shardset_node.replication.machines import ShardMachine
from shardset_node.storage.diskspace import disk_space
from shardset_proto.consistency import MODES


class WireCounters(Protocol):
    """What the wire server counts (a front end, above this module)."""

    @property
    def connections(self) -> int: ...
    @property
    def requests(self) -> int: ...
    @property
    def closed_idle(self) -> int: ...


class NodeMetrics:
    def __init__(self, node: Node, reads: ReadPath, wire: WireCounters) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_NodeCollector(node, reads, wire))


class _NodeCollector(Collector):
    def __init__(self, node: Node, reads: ReadPath, wire: WireCounters) -> None:
        self.node = node
        self.reads = reads
        self.wire = wire

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        host = self.node.host
        term = GaugeMetricFamily("shardset_raft_term", "Current Raft term", labels=["group"])
        leader = GaugeMetricFamily(
            "shardset_raft_is_leader", "1 if this node leads the group", labels=["group"]
        )
        commit = GaugeMetricFamily("shardset_raft_commit_index", "Commit index", labels=["group"])
        applied = GaugeMetricFamily(
            "shardset_raft_applied_index", "Applied index", labels=["group"]
        )
        for gid, g in host.groups.items():
            label = [str(gid)]
            term.add_metric(label, g.raft.term)
            leader.add_metric(label, 1.0 if g.raft.leader == self.node.id else 0.0)
            commit.add_metric(label, g.raft.committed)
            applied.add_metric(label, g.raft.applied)
        yield from (term, leader, commit, applied)
        yield from (_recovering(self.node), _users(self.node))
        yield from self._integrity()
        yield from _disk_metrics(self.node)
        reads = self.reads
        served = CounterMetricFamily(
            "shardset_reads_served", "Reads this node served, by consistency mode", labels=["mode"]
        )
        refused = CounterMetricFamily(
            "shardset_reads_redirected_or_refused",
            "Reads this node could not serve under their mode (307 or an error)",
            labels=["mode"],
        )
        for mode in MODES:
            served.add_metric([mode], reads.served[mode])
            refused.add_metric([mode], reads.refused[mode])
        yield from (served, refused)
        yield CounterMetricFamily("shardset_raft_rounds", "Host loop rounds", value=host.rounds)
        yield CounterMetricFamily(
            "shardset_disk_syncs", "Rounds that synced the write-ahead log", value=host.syncs
        )
        yield from _peer_metrics(self.node)
        wire = self.wire
        yield GaugeMetricFamily(
            "shardset_wire_connections",
            "Open client connections of the binary wire protocol",
            value=wire.connections,
        )
        yield CounterMetricFamily(
            "shardset_wire_requests",
            "Requests answered over the wire protocol",
            value=wire.requests,
        )
        yield CounterMetricFamily(
            "shardset_wire_connections_closed_idle",
            "Wire connections closed for idling or for a frame left half sent",
            value=wire.closed_idle,
        )
        yield GaugeMetricFamily(
            "shardset_engine_malformed",
            "1 once SQLite reported the engine file damaged: nothing is served, the node "
            "exits and quarantines the file at its restart",
            value=1.0 if self.node.engine.malformed else 0.0,
        )

    def _integrity(self) -> Iterator[GaugeMetricFamily]:
        """Issue 15: corrupt replicas here, and the last consistency check of each shard
        this node led (which replicas the majority outvoted)."""
        corrupt = GaugeMetricFamily(
            "shardset_replica_corrupt",
            "1 if this node's replica of the shard failed a checksum or a consistency "
            "check and is being rebuilt",
            labels=["shard"],
        )
        for shard in sorted(self.node.engine.corrupt):
            corrupt.add_metric([str(shard)], 1.0)
        mismatch = GaugeMetricFamily(
            "shardset_consistency_mismatch",
            "1 if the last consistency check this node led found the replica's digest "
            "different from the majority's (or its rows corrupt)",
            labels=["shard", "replica"],
        )
        checked = GaugeMetricFamily(
            "shardset_consistency_check_index",
            "Applied index of the last consistency check this node led",
            labels=["shard"],
        )
        for gid, g in sorted(self.node.host.groups.items()):
            view = g.machine.last_check if isinstance(g.machine, ShardMachine) else None
            if view is None:
                continue
            checked.add_metric([str(gid)], view.index)
            for replica in view.digests:
                bad = 1.0 if replica in view.mismatched else 0.0
                mismatch.add_metric([str(gid), str(replica)], bad)
        yield from (corrupt, mismatch, checked)


def _users(node: Node) -> GaugeMetricFamily:
    # A count only: the table's names and token digests stay off the unauthenticated
    # metrics endpoint (issue 16). Shows a user change reaching every node.
    return GaugeMetricFamily(
        "shardset_users", "Users in this node's applied user table", value=len(node.users.users)
    )


def _recovering(node: Node) -> GaugeMetricFamily:
    """Issue 15: replicas that cut a damaged log tail and abstain from votes and commit
    quorums until their shard commits past what they may have lost (Protocol-Aware
    Recovery); the value is that index. Only the groups recovering are listed."""
    family = GaugeMetricFamily(
        "shardset_raft_recovering",
        "Log index this replica may have lost when it cut a damaged WAL tail; it does "
        "not vote or count toward commitment until its shard commits past it",
        labels=["shard"],
    )
    for gid, g in sorted(node.host.groups.items()):
        if g.raft.recovering:
            family.add_metric([str(gid)], g.raft.recovering)
    return family


def _disk_metrics(node: Node) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    """Issue 15: the data file system's space and whether the node refuses writes for
    lack of it (below the reserve, or a write that failed with ENOSPC: `full`) or has
    its Raft groups stalled on such a write (`stalled`)."""
    space = disk_space(node.cfg.data_dir)
    if space is not None:  # the file system could not be asked: no sample, not a 0
        yield GaugeMetricFamily(
            "shardset_disk_free_bytes",
            "Bytes free (for the node's user) on the data file system",
            value=space.free_bytes,
        )
        yield GaugeMetricFamily(
            "shardset_disk_total_bytes", "Size of the data file system", value=space.total_bytes
        )
    stalled = node.host.disk_stall is not None
    yield GaugeMetricFamily(
        "shardset_disk_min_free_bytes",
        "Free space the node keeps in reserve: below it, writes are refused (507)",
        value=node.cfg.min_free_bytes,
    )
    yield GaugeMetricFamily(
        "shardset_disk_full",
        "1 if the node refuses writes for lack of space (below the reserve, or a write "
        "failed with no space left)",
        value=1.0 if stalled or node.low_space is not None else 0.0,
    )
    yield GaugeMetricFamily(
        "shardset_disk_stalled",
        "1 if the node's Raft groups are stalled on a write that found the disk full",
        value=1.0 if stalled else 0.0,
    )
    yield CounterMetricFamily(
        "shardset_disk_stall_dropped_messages",
        "Peer Raft messages dropped while the Raft groups were stalled on a full disk",
        value=node.host.dropped_while_stalled,
    )


def _peer_metrics(node: Node) -> Iterator[CounterMetricFamily]:
    """What the peer transport refused: bad frames (the connection is closed) and
    messages that failed shardset_proto.peer_checks (dropped one by one)."""
    transport = node.transport
    if transport is None:
        return
    stats = transport.stats
    yield CounterMetricFamily(
        "shardset_peer_bad_frames",
        "Inbound peer frames refused (oversized, truncated or undecodable)",
        value=stats.bad_frames,
    )
    rejected = CounterMetricFamily(
        "shardset_peer_messages_rejected",
        "Inbound peer messages dropped by the checks of every field, by sending peer",
        labels=["peer"],
    )
    for peer, ps in sorted(stats.peers.items()):
        if ps.rejected:
            rejected.add_metric([str(peer)], ps.rejected)
    yield rejected
