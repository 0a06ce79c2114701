"""Placement and the shard map: pure rules every caller must agree on."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardset_proto.placement import (
    PlacementError,
    initial_replicas,
    initial_slots,
    preferred_leaders,
    replica_counts,
)
from shardset_proto.shardmap import NodeAddress, ShardMap, bootstrap_map
from shardset_proto.slots import SLOTS


@given(st.integers(1, 64), st.integers(1, 9), st.data())
def test_replicas_are_distinct_and_evenly_spread(shards: int, n: int, data: st.DataObject) -> None:
    rf = data.draw(st.integers(1, n))
    nodes = list(range(1, n + 1))
    replicas = initial_replicas(list(range(1, shards + 1)), nodes, rf)
    assert all(len(set(h)) == rf for h in replicas.values())
    counts = replica_counts(replicas, nodes)
    assert max(counts.values()) - min(counts.values()) <= 1
    leaders = list(preferred_leaders(replicas).values())
    per_node = [leaders.count(x) for x in nodes]
    assert max(per_node) - min(per_node) <= 1


@given(st.integers(1, 300))
def test_slot_ranges_tile_the_whole_space(shards: int) -> None:
    ranges = initial_slots(shards)
    assert ranges[0].start == 0 and ranges[-1].end == SLOTS
    assert all(a.end == b.start for a, b in itertools.pairwise(ranges))
    sizes = [r.end - r.start for r in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_impossible_layouts_are_refused_with_the_reason() -> None:
    with pytest.raises(PlacementError, match="needs at least 3 nodes"):
        initial_replicas([1], [1, 2], 3)
    with pytest.raises(PlacementError, match="shards must be"):
        initial_slots(0)


def test_shard_map_round_trips_and_routes_every_slot() -> None:
    nodes = {
        i: NodeAddress(f"127.0.0.1:{7000 + i}", f"http://127.0.0.1:{8000 + i}") for i in (1, 2, 3)
    }
    m = bootstrap_map(nodes, shards=8, replication=3)
    assert ShardMap.decode(m.encode()) == m
    assert m.shard_of_slot(0) == 1 and m.shard_of_slot(SLOTS - 1) == 8
    assert m.shards_on(2) == list(range(1, 9))
    assert m.with_changes().epoch == m.epoch + 1


def test_a_map_with_a_gap_in_its_slots_is_refused() -> None:
    m = bootstrap_map({1: NodeAddress("a:1", "http://a:2")}, shards=2, replication=1)
    with pytest.raises(ValueError, match="without gaps"):
        ShardMap(epoch=2, slots=m.slots[1:], replicas=m.replicas)
