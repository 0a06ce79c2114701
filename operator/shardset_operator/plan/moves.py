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
from typing import Any, Literal

from shardset_operator.plan.rebalance import Move

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
    """What to do next: call `action` on node `at` (META: the metadata leader), wait, or
    nothing (the move is complete)."""

    kind: Literal["call", "wait", "done"]
    text: str
    action: str = ""
    at: int = META
    body: dict[str, Any] = field(default_factory=dict)


def call(action: str, at: int, body: dict[str, Any], text: str) -> Step:
    return Step("call", text, action, at, body)


def wait(text: str) -> Step:
    return Step("wait", text)


DONE = Step("done", "complete")


def next_step(move: Move, v: ShardView) -> Step:
    s, t, src = move.shard, move.target, move.source
    if v.leader is None:
        return wait(f"shard {s} has no leader")
    if t not in v.members:
        if t not in v.hosts:
            return call("create-replica", t, {"shard": s}, f"create a replica of shard {s} on {t}")
        text = f"add node {t} to shard {s} as learner"
        return call("add-learner", v.leader, {"shard": s, "node": t}, text)
    if t in v.learners:
        lag = v.lag.get(t)
        if lag is None or lag > CATCH_UP_LAG:
            behind = "unknown" if lag is None else str(lag)
            return wait(f"node {t} catching up on shard {s} ({behind} entries behind)")
        return call("promote", v.leader, {"shard": s, "node": t}, f"promote node {t} in shard {s}")
    if src is not None and src in v.voters:
        if v.leader == src:
            return call(
                "transfer-leader",
                src,
                {"shard": s, "to": t},
                f"move leadership of shard {s} from {src} to {t}",
            )
        return call(
            "remove-replica",
            v.leader,
            {"shard": s, "node": src},
            f"remove node {src} from shard {s}",
        )
    if sorted(v.recorded) != sorted(v.voters):
        return record(v)
    if src is not None and src in v.hosts:
        return call("drop-replica", src, {"shard": s}, f"delete node {src}'s copy of shard {s}")
    return DONE


def record(v: ShardView) -> Step:
    """Bring the shard map's replica list in line with the group's voters (a conf change
    whose map update was interrupted)."""
    return call(
        "record-replicas",
        META,
        {"shard": v.shard, "voters": sorted(v.voters)},
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
                "remove-replica",
                v.leader,
                {"shard": s, "node": learner},
                f"remove leftover learner {learner} from shard {s}",
            )
        if sorted(v.recorded) != sorted(v.voters):
            return record(v)
        for stray in sorted(v.hosts - v.members):
            return call("drop-replica", stray, {"shard": s}, f"delete stray replica {s} on {stray}")
    return None


def views_of(
    reports: Mapping[int, Mapping[str, Any] | None], recorded: Mapping[int, tuple[int, ...]]
) -> dict[int, ShardView]:
    """A view of every shard in the map, from the nodes' status reports. The leader is
    the self-declared leader of the highest term; membership is the leader's."""
    out = {}
    for shard, holders in recorded.items():
        leader: tuple[int, int, Mapping[str, Any]] | None = None  # (term, node, entry)
        hosts = set()
        for node, report in reports.items():
            entry = _group(report, shard)
            if entry is None:
                continue
            hosts.add(node)
            if entry.get("role") == "leader":
                term = int(entry.get("term", 0))
                if leader is None or term > leader[0]:
                    leader = (term, node, entry)
        if leader is None:
            out[shard] = ShardView(shard, None, frozenset(), frozenset(), frozenset(hosts))
            continue
        _, node, entry = leader
        followers = entry.get("followers") or {}
        out[shard] = ShardView(
            shard,
            node,
            frozenset(int(n) for n in entry.get("voters", [])),
            frozenset(int(n) for n in entry.get("learners", [])),
            frozenset(hosts),
            {int(n): int(f.get("lag", 0)) for n, f in followers.items()} | {node: 0},
            tuple(holders),
        )
    return out


def _group(report: Mapping[str, Any] | None, shard: int) -> Mapping[str, Any] | None:
    if report is None:
        return None
    groups = report.get("groups")
    entry = groups.get(str(shard)) if isinstance(groups, Mapping) else None
    return entry if isinstance(entry, Mapping) else None
