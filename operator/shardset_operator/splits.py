"""Growing the shard count (pure): which slots go to the next new shard.

`spec.shards` can only grow (a CEL rule refuses a decrease: merging is not supported).
Each split hands the upper half of the widest slot range to a new shard, whose first
replicas are the source's voters; the node carries the split out online (freeze,
export, ingest, shard map update with a new epoch, drop: `split-shard`), and the
rebalancer then spreads the new shard's replicas and leaders like any other's. Clients
holding an older shard map are refused by epoch and refetch it.
"""

from __future__ import annotations

from dataclasses import dataclass

from shardset_proto.shardmap import ShardMap


@dataclass(frozen=True)
class Split:
    shard: int  # the source
    new_shard: int
    start: int  # slots [start, end) move
    end: int


def plan_split(live: ShardMap, shards: int) -> Split | None:
    """The next split toward `shards` shards, or None when there are enough."""
    if len(live.replicas) >= shards:
        return None
    widest = max(live.slots, key=lambda r: (r.end - r.start, -r.start))
    if widest.end - widest.start < 2:
        return None  # nothing left to halve (more shards than slots)
    middle = (widest.start + widest.end) // 2
    return Split(widest.shard, max(live.replicas) + 1, middle, widest.end)
