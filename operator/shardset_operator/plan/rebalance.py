"""Where replicas should move: a pure planner for scaling and rebalancing.

Given which nodes hold each shard's replicas and which nodes the store should use,
`plan_moves` names the next replica moves. Each move is carried out as add a learner
on `target`, let it catch up, promote it, then remove `source` (or no removal, for a
shard short of replicas), so a shard never has fewer voters than it had during a
move. The planner holds no state: rerun after any step, it plans from what the store
reports, which is what makes an interrupted rebalance resumable.

Order of work: shards short of replicas first (a lost node), then replicas on nodes
being drained (scale-down drains before the StatefulSet shrinks), then spreading
until no node holds more than one replica above another. plan/operation.py asks it
for the next move of a scaling, failover or rebalance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


class PlanError(ValueError):
    """The requested shape cannot hold the store; nothing should be moved."""


@dataclass(frozen=True, order=True)
class Move:
    shard: int
    source: int | None  # None: add a replica without removing one
    target: int

    def apply(self, replicas: Mapping[int, tuple[int, ...]]) -> dict[int, tuple[int, ...]]:
        """The placement after this move completes (for planning ahead and tests)."""
        after = dict(replicas)
        kept = tuple(n for n in after[self.shard] if n != self.source)
        after[self.shard] = (*kept, self.target)
        return after


def load(replicas: Mapping[int, Sequence[int]], nodes: Sequence[int]) -> dict[int, int]:
    """Replicas per node, counting only `nodes` (each starts at zero)."""
    counts = dict.fromkeys(nodes, 0)
    for holders in replicas.values():
        for n in holders:
            if n in counts:
                counts[n] += 1
    return counts


def plan_moves(
    replicas: Mapping[int, tuple[int, ...]],
    nodes: Sequence[int],
    replication: int,
    max_moves: int = 1,
) -> list[Move]:
    """Up to `max_moves` moves, at most one per shard, toward an even placement on
    `nodes` with `replication` replicas per shard. An empty list means balanced."""
    if replication < 1:
        raise PlanError(f"replication factor {replication} must be at least 1")
    if len(nodes) < replication:
        raise PlanError(
            f"{len(nodes)} nodes cannot hold {replication} replicas of each shard: "
            "a scale-down below the replication factor is refused"
        )
    state = {s: tuple(h) for s, h in replicas.items()}
    moves: list[Move] = []
    busy: set[int] = set()
    while len(moves) < max_moves:
        move = _next_move(state, list(nodes), replication, busy)
        if move is None:
            break
        moves.append(move)
        busy.add(move.shard)
        state = move.apply(state)
    return moves


def _next_move(
    state: dict[int, tuple[int, ...]], nodes: list[int], replication: int, busy: set[int]
) -> Move | None:
    counts = load(state, nodes)
    wanted = set(nodes)
    free = sorted(s for s in state if s not in busy)
    for shard in free:  # short of replicas: add before anything else
        live = [n for n in state[shard] if n in wanted]
        if len(live) < replication:
            target = _least_loaded(counts, exclude=set(state[shard]))
            if target is not None:
                gone = [n for n in state[shard] if n not in wanted]
                return Move(shard, gone[0] if gone else None, target)
    for shard in free:  # replicas on nodes that are leaving
        for source in state[shard]:
            if source not in wanted:
                target = _least_loaded(counts, exclude=set(state[shard]))
                if target is not None:
                    return Move(shard, source, target)
    return _spread(state, counts, free)


def _spread(
    state: dict[int, tuple[int, ...]], counts: dict[int, int], free: list[int]
) -> Move | None:
    """Move one replica from the fullest node to the emptiest one that lacks it."""
    for source in sorted(counts, key=lambda n: (-counts[n], n)):
        for shard in free:
            if source not in state[shard]:
                continue
            target = _least_loaded(counts, exclude=set(state[shard]))
            if target is not None and counts[source] - counts[target] > 1:
                return Move(shard, source, target)
    return None


def _least_loaded(counts: dict[int, int], exclude: set[int]) -> int | None:
    options = [n for n in counts if n not in exclude]
    return min(options, key=lambda n: (counts[n], n)) if options else None
