"""The split planner: the widest range is halved, new shards get the next ids, and it
stops at the requested count."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shardset_operator.splits import plan_split
from shardset_proto.shardmap import NodeAddress, ShardMap, bootstrap_map, split_range
from shardset_proto.slots import SLOTS


def grown(start: int, target: int) -> ShardMap:
    m = _map(start)
    for _ in range(SLOTS):
        split = plan_split(m, target)
        if split is None:
            return m
        slots = split_range(m.slots, split.shard, split.new_shard, split.start, split.end)
        replicas = {**m.replicas, split.new_shard: m.replicas[split.shard]}
        m = m.with_changes(slots=slots, replicas=replicas)
    raise AssertionError("did not stop")


def _map(shards: int) -> ShardMap:
    nodes = {i: NodeAddress(f"h{i}:1", f"http://h{i}:2") for i in (1, 2, 3)}
    return bootstrap_map(nodes, shards, 3)


@given(start=st.integers(1, 12), more=st.integers(0, 20))
def test_splits_reach_the_count_and_keep_ranges_even(start: int, more: int) -> None:
    m = grown(start, start + more)
    assert sorted(m.replicas) == list(range(1, start + more + 1))
    widths = [r.end - r.start for r in m.slots]
    assert sum(widths) == SLOTS
    # Halving the widest each time keeps the widest at most twice the narrowest (+1).
    assert max(widths) <= 2 * min(widths) + 1, widths


def test_nothing_to_split_at_or_above_the_count() -> None:
    assert plan_split(_map(8), 8) is None
    assert plan_split(_map(8), 4) is None
