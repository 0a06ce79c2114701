"""The replica-move planner: converges, never shrinks a shard during a move, refuses
shapes that cannot hold the store, and plans nothing for a balanced store."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardset_operator.rebalance import Move, PlanError, load, plan_moves
from shardset_proto.placement import initial_replicas


def _placement(shards: int, nodes: int, rf: int) -> dict[int, tuple[int, ...]]:
    return initial_replicas(list(range(1, shards + 1)), list(range(1, nodes + 1)), rf)


def _run(
    replicas: dict[int, tuple[int, ...]], nodes: list[int], rf: int, max_moves: int
) -> tuple[dict[int, tuple[int, ...]], list[Move]]:
    """Plan and apply until the planner is satisfied, checking every move."""
    done: list[Move] = []
    for _ in range(10 * len(replicas) * rf + 10):
        moves = plan_moves(replicas, nodes, rf, max_moves)
        if not moves:
            return replicas, done
        assert len(moves) <= max_moves
        assert len({m.shard for m in moves}) == len(moves), "two moves of one shard at once"
        for m in moves:
            assert m.target in nodes and m.target not in replicas[m.shard]
            assert m.source is None or m.source in replicas[m.shard]
            before = len(replicas[m.shard])
            replicas = m.apply(replicas)
            assert len(replicas[m.shard]) >= min(before, rf), "a move shrank a shard"
        done.extend(moves)
    raise AssertionError(f"no convergence; still planning {moves}")


def _check_balanced(replicas: dict[int, tuple[int, ...]], nodes: list[int], rf: int) -> None:
    for shard, holders in replicas.items():
        assert len(holders) == rf and len(set(holders)) == rf, (shard, holders)
        assert set(holders) <= set(nodes), (shard, holders)
    counts = load(replicas, nodes)
    assert max(counts.values()) - min(counts.values()) <= 1, counts


def test_scale_up_three_to_five_spreads_replicas_evenly() -> None:
    start = _placement(8, 3, 3)
    end, moves = _run(start, [1, 2, 3, 4, 5], 3, max_moves=1)
    _check_balanced(end, [1, 2, 3, 4, 5], 3)
    assert sorted(load(end, [1, 2, 3, 4, 5]).values()) == [4, 5, 5, 5, 5]
    assert len(moves) == 9  # 24 replicas, 3 nodes at 8 each down to 5,5,5 (+4,5 new)


def test_scale_down_drains_the_leaving_nodes_first() -> None:
    start = _placement(8, 5, 3)
    end, moves = _run(start, [1, 2, 3], 3, max_moves=2)
    _check_balanced(end, [1, 2, 3], 3)
    leaving = {4, 5}
    first_spread = next((i for i, m in enumerate(moves) if m.source not in leaving), len(moves))
    assert all(m.source in leaving for m in moves[:first_spread])
    assert not any(n in leaving for holders in end.values() for n in holders)


def test_a_lost_node_is_replaced_on_the_others() -> None:
    start = _placement(6, 4, 3)
    end, _ = _run(start, [1, 2, 3], 3, max_moves=3)  # node 4 gone for good
    _check_balanced(end, [1, 2, 3], 3)


def test_below_the_replication_factor_is_refused_and_names_why() -> None:
    with pytest.raises(PlanError, match="2 nodes cannot hold 3 replicas"):
        plan_moves(_placement(4, 3, 3), [1, 2], 3)


def test_a_balanced_store_plans_nothing() -> None:
    assert plan_moves(_placement(8, 3, 3), [1, 2, 3], 3) == []
    assert plan_moves(_placement(12, 5, 3), [1, 2, 3, 4, 5], 3, max_moves=4) == []


@given(
    shards=st.integers(1, 16),
    before=st.integers(1, 7),
    after=st.integers(1, 7),
    rf=st.integers(1, 5),
    max_moves=st.integers(1, 4),
)
def test_any_resize_converges_to_an_even_placement(
    shards: int, before: int, after: int, rf: int, max_moves: int
) -> None:
    rf = min(rf, before, after)
    start = _placement(shards, before, rf)
    nodes = list(range(1, after + 1))
    end, _ = _run(start, nodes, rf, max_moves)
    _check_balanced(end, nodes, rf)
