"""Spread shard leaderships evenly over the nodes (pure).

Every write of a shard goes through its leader, so a node leading most shards does
most of the work (a new store's elections, or a node that came back, leave it so).
One transfer at a time, from the node leading the most shards to the least busy
voter of one of them, until leader counts differ by at most one where the
placement allows it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from shardset_operator.plan.moves import ShardView


@dataclass(frozen=True)
class Transfer:
    shard: int
    source: int
    target: int


def leader_counts(views: Mapping[int, ShardView], nodes: Sequence[int]) -> dict[int, int]:
    counts = dict.fromkeys(nodes, 0)
    for v in views.values():
        if v.leader in counts:
            counts[v.leader] += 1
    return counts


def plan_transfer(views: Mapping[int, ShardView], nodes: Sequence[int]) -> Transfer | None:
    counts = leader_counts(views, nodes)
    for source in sorted(counts, key=lambda n: (-counts[n], n)):
        for shard, v in sorted(views.items()):
            if v.leader != source:
                continue
            options = [n for n in v.voters if n in counts and n != source]
            if not options:
                continue
            target = min(options, key=lambda n: (counts[n], n))
            if counts[source] - counts[target] > 1:
                return Transfer(shard, source, target)
    return None
