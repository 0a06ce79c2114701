"""Shard health from the nodes' GET /v1/status reports (pure).

A shard is healthy when some responsive node reports itself its leader and the
leader's configuration has at least replicationFactor voters, every one of them
responsive (answering the operator and hosting the shard), and no replica is corrupt or
diverged. Leaderless: no responsive node leads it. Under-replicated: led, but short of
voters or with voters down. Diverged: a replica reports itself corrupt (a row failed its
checksum), or the leader's last consistency check outvoted a replica; the nodes rebuild
such a replica from the leader on their own, so this is reported, not acted on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from shardset_proto.status import NodeStatus


@dataclass(frozen=True)
class ShardHealth:
    shard: int
    leader: int | None
    voters: tuple[int, ...]
    responsive_voters: tuple[int, ...]
    replication_factor: int
    corrupt: tuple[int, ...] = ()  # replicas that report themselves corrupt
    mismatched: tuple[int, ...] = ()  # outvoted by the leader's last consistency check

    @property
    def diverged(self) -> bool:
        return bool(self.corrupt or self.mismatched)

    @property
    def leaderless(self) -> bool:
        return self.leader is None

    @property
    def under_replicated(self) -> bool:
        if self.leaderless:
            return False
        return len(self.voters) < self.replication_factor or len(self.responsive_voters) < len(
            self.voters
        )

    @property
    def quorum_lost(self) -> bool:
        """No leader, and too few of its voters answer to elect one: it stays down
        until they come back, or until an explicit recovery (docs/operations.md)."""
        return (
            self.leaderless
            and bool(self.voters)
            and (2 * len(self.responsive_voters) <= len(self.voters))
        )

    @property
    def healthy(self) -> bool:
        return not self.leaderless and not self.under_replicated and not self.diverged

    def describe(self) -> str:
        if self.leaderless:
            return f"shard {self.shard} has no leader"
        if self.diverged and not self.under_replicated:
            bad = sorted(set(self.corrupt) | set(self.mismatched))
            return (
                f"shard {self.shard}: replicas {bad} corrupt or diverged (consistency check "
                "or checksum); the nodes rebuild them from the leader"
            )
        return (
            f"shard {self.shard} has {len(self.responsive_voters)}/{self.replication_factor} "
            "voters responsive"
        )


def _view(
    shard: int, reports: Mapping[int, NodeStatus | None]
) -> tuple[int | None, tuple[int, ...]]:
    """(leader, voters): from the self-declared leader of the highest term, else from the
    highest-term report of any replica (for the voter list only)."""
    best: tuple[int, int, tuple[int, ...]] | None = None  # (term, leader, voters)
    any_voters: tuple[int, tuple[int, ...]] | None = None  # (term, voters)
    for node, report in reports.items():
        entry = report.group(shard) if report is not None else None
        if entry is None:
            continue
        term = entry.term
        voters = tuple(sorted(entry.voters))
        if any_voters is None or term > any_voters[0]:
            any_voters = (term, voters)
        if entry.is_leader and (best is None or term > best[0]):
            best = (term, node, voters)
    if best is not None:
        return best[1], best[2]
    return None, any_voters[1] if any_voters else ()


def _hosts(report: NodeStatus | None, shard: int) -> bool:
    return report is not None and report.group(shard) is not None


def shard_health(
    reports: Mapping[int, NodeStatus | None],
    expected_shards: Iterable[int],
    replication_factor: int,
) -> dict[int, ShardHealth]:
    """Health of every expected shard and of any other shard a node reports.

    `reports` maps each node id to its status report, or None when it did not answer.
    The metadata group ("meta") is not a shard and is left out.
    """
    shards = set(expected_shards)
    for report in reports.values():
        if report is not None:
            shards.update(report.shards)
    out = {}
    for shard in sorted(shards):
        leader, voters = _view(shard, reports)
        responsive = tuple(v for v in voters if _hosts(reports.get(v), shard))
        corrupt, mismatched = _integrity(shard, leader, reports)
        out[shard] = ShardHealth(
            shard, leader, voters, responsive, replication_factor, corrupt, mismatched
        )
    return out


def _integrity(
    shard: int, leader: int | None, reports: Mapping[int, NodeStatus | None]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(replicas reporting themselves corrupt, replicas the leader's last consistency
    check outvoted) of `shard`."""
    corrupt = tuple(
        sorted(
            n
            for n, r in reports.items()
            if r is not None and (g := r.group(shard)) is not None and g.corrupt
        )
    )
    report = reports.get(leader) if leader is not None else None
    entry = report.group(shard) if report is not None else None
    check = entry.consistency_check if entry is not None else None
    mismatched = tuple(check.mismatched) if check is not None and not check.ok else ()
    return corrupt, mismatched
