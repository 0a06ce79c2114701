"""The operation driver against an in-memory store (fakestore.py): scaling up and down,
failover of a gone node, pause, and an operator that crashes mid-move and resumes
from its journal. Each run checks the store's end state and that no shard ever had
fewer voters than the replication factor."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardset_operator.api.models import Journal, ShardSetSpec
from shardset_operator.api.naming import Names
from shardset_operator.plan.operation import planner as plan_of_members
from shardset_operator.reconcile import operation

from .fakestore import FakeStore

NAMES = Names("kv", "prod")


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(operation, "POLL_SECONDS", 0.0)


def spec(**fields: Any) -> ShardSetSpec:
    return ShardSetSpec.model_validate(fields)


def _now() -> datetime:
    return datetime.now(UTC)


def planner(s: ShardSetSpec, gone: frozenset[int] = frozenset()) -> Any:
    return plan_of_members(s.nodes, set(gone))


def converge(
    store: FakeStore,
    s: ShardSetSpec,
    *,
    gone: set[int] = frozenset(),  # type: ignore[assignment]
    journal: Journal | None = None,
    rounds: int = 50,
) -> tuple[Journal | None, list[operation.Round]]:
    """Rounds until the journal is empty (the operation finished)."""
    ids = list(range(1, 8))
    done: list[operation.Round] = []
    for _ in range(rounds):
        r = asyncio.run(
            operation.run_round(store, NAMES, s, planner(s, gone), ids, journal, _now, 5.0)  # type: ignore[arg-type]
        )
        done.append(r)
        journal = r.journal
        if journal is None and r.waiting is None:
            return None, done
    raise AssertionError(f"no convergence after {rounds} rounds: {done[-1]}")


def assert_settled(store: FakeStore, nodes: set[int], floor: int | None = None) -> None:
    """`floor`: the fewest voters a shard may have had on the way (default: rf)."""
    assert store.members == nodes
    assert store.min_voters >= (floor or store.rf), "a shard lost a voter during a move"
    for s, g in store.groups.items():
        assert len(g.voters) == store.rf and g.voters <= nodes, (s, g)
        assert not g.learners and g.hosts == g.voters, (s, g)
        assert store.recorded[s] == sorted(g.voters)
    loads = store.loads()
    assert max(loads.values()) - min(loads.values()) <= 1, loads
    leaders = store.leader_loads()
    assert max(leaders.values()) - min(leaders.values()) <= 1, leaders


def test_scale_up_adds_nodes_then_spreads_replicas_and_leaders() -> None:
    store = FakeStore(3, 8, 3, NAMES)
    store.running |= {4, 5}  # the StatefulSet started the new pods
    _, rounds = converge(store, spec(nodes=5, shards=8))
    assert_settled(store, {1, 2, 3, 4, 5})
    notes = [n for r in rounds for n in r.notes]
    assert ("StepDone", "add node 4 to the store") in notes
    assert any(reason == "OperationDone" and "scale up to 5" in text for reason, text in notes)


def test_scale_down_drains_the_highest_nodes_before_removing_them() -> None:
    store = FakeStore(3, 8, 3, NAMES)
    store.running |= {4, 5}
    converge(store, spec(nodes=5, shards=8))
    converge(store, spec(nodes=3, shards=8))
    assert_settled(store, {1, 2, 3})
    removals = [i for i, c in enumerate(store.calls) if c.startswith("remove-node")]
    last_move = max(i for i, c in enumerate(store.calls) if c.startswith("remove-replica"))
    assert removals and min(removals) > last_move, "a node was removed while holding replicas"


def test_a_gone_node_has_its_replicas_rebuilt_on_the_others() -> None:
    store = FakeStore(4, 8, 3, NAMES)
    store.running.discard(2)
    # Node 2's leaderships moved by election in a real store.
    for g in store.groups.values():
        if g.leader == 2:
            g.leader = min(g.voters - {2})
    converge(store, spec(nodes=4, shards=8), gone={2})
    for g in store.groups.values():
        assert len(g.voters) == 3 and 2 not in g.voters


def test_an_unreachable_node_that_is_not_gone_yet_holds_moves_back() -> None:
    store = FakeStore(3, 8, 3, NAMES)
    store.running |= {4}
    store.running.discard(2)
    r = asyncio.run(
        operation.run_round(
            store,
            NAMES,
            spec(nodes=4, shards=8),
            planner(spec(nodes=4)),
            list(range(1, 5)),
            None,
            _now,
            0.5,
        )  # type: ignore[arg-type]
    )
    moves = [c for c in store.calls if c.startswith(("create-replica", "add-learner"))]
    assert all("'shard': 0" in c for c in moves), moves  # only node 4's metadata replica
    assert 4 in store.members  # joining still happens
    assert r.journal is None or r.journal.move is None


def test_a_node_back_on_an_empty_volume_is_removed_and_given_replicas_again() -> None:
    store = FakeStore(3, 8, 3, NAMES)
    store.lose_volume(2)
    converge(store, spec(nodes=3, shards=8))
    # Node 2's empty copies are removed (2 real voters remain) before new ones are added.
    assert_settled(store, {1, 2, 3}, floor=2)
    assert store.meta_voters == {1, 2, 3} and 2 in store.meta_hosts
    assert any(c.startswith("remove-replica") and "'node': 2" in c for c in store.calls)


def test_new_nodes_become_metadata_voters_up_to_five() -> None:
    store = FakeStore(3, 4, 3, NAMES)
    store.running |= {4, 5, 6}
    store.meta_hosts -= {4, 5, 6}  # new pods of an existing store start without it
    converge(store, spec(nodes=6, shards=4))
    assert len(store.meta_voters) == 5 and store.meta_voters | store.meta_learners == set(
        range(1, 7)
    )
    converge(store, spec(nodes=3, shards=4))
    assert store.meta_voters <= {1, 2, 3} and store.members == {1, 2, 3}


def test_more_shards_are_split_off_online_then_spread() -> None:
    store = FakeStore(3, 4, 3, NAMES)
    store.running |= {4}
    converge(store, spec(nodes=4, shards=7))
    assert sorted(store.groups) == [1, 2, 3, 4, 5, 6, 7]
    widths = sorted(b - a for a, b, _ in store.slots)
    assert sum(widths) == 16384 and widths[-1] - widths[0] <= 16384 // 4, widths
    assert_settled(store, {1, 2, 3, 4})


def test_paused_rebalance_starts_no_move() -> None:
    store = FakeStore(3, 8, 3, NAMES)
    store.running |= {4, 5}
    s = spec(nodes=5, shards=8, rebalance={"paused": True})
    asyncio.run(
        operation.run_round(store, NAMES, s, planner(s), list(range(1, 6)), None, _now, 0.5)
    )  # type: ignore[arg-type]
    assert store.members == {1, 2, 3, 4, 5}
    moved = [
        c
        for c in store.calls
        if c.startswith(("create-replica", "add-learner", "transfer")) and "'shard': 0" not in c
    ]
    assert not moved, moved  # the new nodes joined, but no shard replica or leader moved


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(when=st.floats(min_value=0, max_value=1, exclude_max=True))
def test_an_operator_crash_mid_move_resumes_from_the_journal(when: float) -> None:
    s = spec(nodes=4, shards=6)
    dry = FakeStore(3, 6, 3, NAMES)
    dry.running |= {4}
    converge(dry, s)
    store = FakeStore(3, 6, 3, NAMES)
    store.running |= {4}
    journal: Journal | None = None
    store.fail_after = int(when * len(dry.calls))
    ids = list(range(1, 5))
    with pytest.raises(RuntimeError):
        # Rounds until the crash; the journal of each finished round was in status.
        for _ in range(100):
            r = asyncio.run(
                operation.run_round(store, NAMES, s, planner(s), ids, journal, _now, 5.0)
            )  # type: ignore[arg-type]
            journal = r.journal
    store.fail_after = None
    converge(store, s, journal=journal)
    assert_settled(store, {1, 2, 3, 4})
