"""One replica move, carried out step by step from what the nodes report (pure).

A move (shard, source, target) runs as: create an empty replica on the target, add it
as a learner, wait until it has caught up, promote it to voter, move leadership off
the source if it leads, remove the source from the group, drop the source's copy.
The shard never has fewer voters than before the move, and a learner does not vote,
so a slow or failing target cannot cost the shard its quorum.

`next_step` looks only at the current state of the shard, never at which step ran
last: after an interruption (an operator restart, a failed call) the same move is
resumed from wherever the store is, and a step already done is never repeated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from shardset_operator.plan.rebalance import Move
from shardset_proto.admin import (
    AddLearner,
    AdminAction,
    AdminBody,
    CreateReplica,
    DropReplica,
    Promote,
    RecordReplicas,
    RemoveReplica,
    TransferLeader,
)
from shardset_proto.status import GroupStatus, NodeStatus

# A learner this close to the leader's log is promoted (the rest arrives in the next
# heartbeat round); further behind, promoting it would stall commits until it catches up.
CATCH_UP_LAG = 64
META = 0  # `Step.at` value: the metadata group's leader


@dataclass(frozen=True)
class ShardView:
    """One shard as its replicas report it (GET /v1/status of every answering node)."""

    shard: int
    leader: int | None
    voters: frozenset[int]
    learners: frozenset[int]
    hosts: frozenset[int]  # answering nodes that have a replica of the group
    lag: Mapping[int, int] = field(default_factory=dict)  # leader's view: entries behind
    recorded: tuple[int, ...] = ()  # the shard map's replicas

    @property
    def members(self) -> frozenset[int]:
        return self.voters | self.learners


@dataclass(frozen=True)
class Step:
    """What to do next: send the admin `body` to node `at` (META: the metadata leader),
    wait, or nothing (the move is complete)."""

    kind: Literal["call", "wait", "done"]
    text: str
    body: AdminBody | None = None  # for a call
    at: int = META

    @property
    def action(self) -> AdminAction | None:
        return self.body.action if self.body is not None else None


def call(body: AdminBody, at: int, text: str) -> Step:
    return Step("call", text, body, at)


def wait(text: str) -> Step:
    return Step("wait", text)


DONE = Step("done", "complete")


def next_step(move: Move, v: ShardView) -> Step:
    s, t, src = move.shard, move.target, move.source
    if v.leader is None:
        return wait(f"shard {s} has no leader")
    if t not in v.members:
        if t not in v.hosts:
            return call(CreateReplica(shard=s), t, f"create a replica of shard {s} on {t}")
        text = f"add node {t} to shard {s} as learner"
        return call(AddLearner(shard=s, node=t), v.leader, text)
    if t in v.learners:
        lag = v.lag.get(t)
        if lag is None or lag > CATCH_UP_LAG:
            behind = "unknown" if lag is None else str(lag)
            return wait(f"node {t} catching up on shard {s} ({behind} entries behind)")
        return call(Promote(shard=s, node=t), v.leader, f"promote node {t} in shard {s}")
    if src is not None and src in v.voters:
        if v.leader == src:
            return call(
                TransferLeader(shard=s, to=t),
                src,
                f"move leadership of shard {s} from {src} to {t}",
            )
        return call(
            RemoveReplica(shard=s, node=src),
            v.leader,
            f"remove node {src} from shard {s}",
        )
    if sorted(v.recorded) != sorted(v.voters):
        return record(v)
    if src is not None and src in v.hosts:
        return call(DropReplica(shard=s), src, f"delete node {src}'s copy of shard {s}")
    return DONE


def record(v: ShardView) -> Step:
    """Bring the shard map's replica list in line with the group's voters (a conf change
    whose map update was interrupted)."""
    return call(
        RecordReplicas(shard=v.shard, voters=sorted(v.voters)),
        META,
        f"record shard {v.shard}'s voters {sorted(v.voters)} in the shard map",
    )


def cleanup_step(views: Mapping[int, ShardView], moving: frozenset[int]) -> Step | None:
    """Leftovers of interrupted or abandoned moves, outside the shards being moved:
    a learner no move wants, a stale shard-map entry, a replica on a node that is no
    member of the group any more."""
    for s, v in sorted(views.items()):
        if s in moving or v.leader is None:
            continue
        for learner in sorted(v.learners):
            return call(
                RemoveReplica(shard=s, node=learner),
                v.leader,
                f"remove leftover learner {learner} from shard {s}",
            )
        if sorted(v.recorded) != sorted(v.voters):
            return record(v)
        for stray in sorted(v.hosts - v.members):
            return call(DropReplica(shard=s), stray, f"delete stray replica {s} on {stray}")
    return None


def views_of(
    reports: Mapping[int, NodeStatus | None], recorded: Mapping[int, tuple[int, ...]]
) -> dict[int, ShardView]:
    """A view of every shard in the map, from the nodes' status reports. The leader is
    the self-declared leader of the highest term; membership is the leader's."""
    out = {}
    for shard, holders in recorded.items():
        leader: tuple[int, int, GroupStatus] | None = None  # (term, node, entry)
        hosts = set()
        for node, report in reports.items():
            entry = report.group(shard) if report is not None else None
            if entry is None:
                continue
            hosts.add(node)
            if entry.is_leader and (leader is None or entry.term > leader[0]):
                leader = (entry.term, node, entry)
        if leader is None:
            out[shard] = ShardView(shard, None, frozenset(), frozenset(), frozenset(hosts))
            continue
        _, node, entry = leader
        out[shard] = ShardView(
            shard,
            node,
            frozenset(entry.voters),
            frozenset(entry.learners),
            frozenset(hosts),
            entry.lags() | {node: 0},
            tuple(holders),
        )
    return out
