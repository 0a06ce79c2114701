"""Where shards live: pure functions shared by the local cluster and the operator.

Nothing here does I/O. Given the nodes and the shape of the store, these
functions say which nodes hold which shard's replicas, which replica should
lead, and which hash slots each shard owns, so that every caller that asks
the same question gets the same answer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from shardset_proto.slots import SLOTS


class PlacementError(ValueError):
    """The requested layout cannot be built (names the constraint it breaks)."""


@dataclass(frozen=True, slots=True)
class SlotRange:
    start: int  # inclusive
    end: int  # exclusive
    shard: int


def initial_slots(shards: int) -> tuple[SlotRange, ...]:
    """Contiguous, near-equal slot ranges: shard i owns the i-th slice of [0, SLOTS)."""
    if not 1 <= shards <= SLOTS:
        raise PlacementError(f"shards must be in [1, {SLOTS}], got {shards}")
    bounds = [round(i * SLOTS / shards) for i in range(shards + 1)]
    return tuple(SlotRange(bounds[i], bounds[i + 1], i + 1) for i in range(shards))


def initial_replicas(
    shard_ids: Sequence[int], nodes: Sequence[int], replication: int
) -> dict[int, tuple[int, ...]]:
    """Replicas of each shard on `replication` distinct nodes, spread evenly.

    Replica j of the k-th shard goes to node (k * replication + j) mod n: the
    replicas are dealt round the ring like cards, so counts per node differ by at
    most one and any `replication` consecutive seats are distinct nodes. The
    first replica of each shard is its preferred leader, chosen so that leaders
    are spread as evenly as the replicas allow.
    """
    ordered = sorted(nodes)
    if len(set(ordered)) != len(ordered):
        raise PlacementError(f"node ids must be distinct, got {list(nodes)}")
    if replication < 1:
        raise PlacementError(f"replication must be at least 1, got {replication}")
    if replication > len(ordered):
        raise PlacementError(
            f"replication {replication} needs at least {replication} nodes, got {len(ordered)}"
        )
    n = len(ordered)
    leads: Counter[int] = Counter()
    placed: dict[int, tuple[int, ...]] = {}
    for k, shard in enumerate(sorted(shard_ids)):
        holders = [ordered[(k * replication + j) % n] for j in range(replication)]
        leader = min(holders, key=lambda node: (leads[node], holders.index(node)))
        leads[leader] += 1
        placed[shard] = (leader, *(h for h in holders if h != leader))
    return placed


def replica_counts(replicas: dict[int, tuple[int, ...]], nodes: Sequence[int]) -> Counter[int]:
    counts: Counter[int] = Counter({n: 0 for n in nodes})
    for holders in replicas.values():
        counts.update(holders)
    return counts


def preferred_leaders(replicas: dict[int, tuple[int, ...]]) -> dict[int, int]:
    """The replica each shard should be led by: the first, which rotates over nodes."""
    return {shard: holders[0] for shard, holders in replicas.items()}
