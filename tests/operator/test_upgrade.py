"""The rolling planner (plan/upgrade.py): a new template holds every pod; pods are released
one at a time, highest first, only when everything is ready and caught up and the pod
leads nothing; a full roll is simulated against a stand-in StatefulSet controller."""

from __future__ import annotations

from shardset_operator.plan.moves import ShardView
from shardset_operator.plan.repair import MetaView
from shardset_operator.plan.upgrade import RollState, plan_roll
from shardset_proto.admin import AdminAction, TransferLeader

NEW, OLD = "rev-new", "rev-old"


def views(leaders: dict[int, int], lag: dict[int, int] | None = None) -> dict[int, ShardView]:
    """Shards on nodes 1..3, led as given; `lag`: node -> entries behind (all shards)."""
    behind = lag or {}
    return {
        s: ShardView(
            s,
            leader,
            frozenset({1, 2, 3}),
            frozenset(),
            frozenset({1, 2, 3}),
            {n: (0 if n == leader else behind.get(n, 0)) for n in (1, 2, 3)},
            (1, 2, 3),
        )
        for s, leader in leaders.items()
    }


def meta(leader: int = 1) -> MetaView:
    return MetaView(leader, frozenset({1, 2, 3}), frozenset(), frozenset({1, 2, 3}), {})


META = meta()


def state(partition: int, revs: dict[int, str], ready: set[int] | None = None) -> RollState:
    up = {1, 2, 3} if ready is None else ready
    return RollState(3, partition, "h", NEW, {n: (r, n in up) for n, r in revs.items()})


ALL_OLD = {1: OLD, 2: OLD, 3: OLD}


def test_a_new_template_holds_every_pod() -> None:
    plan = plan_roll(state(0, {1: OLD, 2: OLD, 3: OLD}), "other-hash", views({1: 1}), META)
    assert plan.partition == 3 and plan.progress


def test_nothing_to_roll_releases_the_partition() -> None:
    plan = plan_roll(state(3, {1: NEW, 2: NEW, 3: NEW}), "h", views({1: 1}), META)
    assert plan.partition == 0 and plan.progress is None and plan.step is None


def test_leadership_leaves_the_next_pod_before_it_restarts() -> None:
    plan = plan_roll(state(3, ALL_OLD), "h", views({1: 1, 2: 3}), META)
    assert plan.partition == 3
    assert plan.step is not None and plan.step.action == AdminAction.TRANSFER_LEADER
    assert isinstance(plan.step.body, TransferLeader)
    assert plan.step.at == 3 and plan.step.body.shard == 2 and plan.step.body.to != 3


def test_the_highest_pod_is_released_once_it_leads_nothing() -> None:
    plan = plan_roll(state(3, ALL_OLD), "h", views({1: 1, 2: 2}), META)
    assert plan.partition == 2 and plan.step is None


def test_a_replica_behind_or_a_pod_not_ready_holds_the_roll() -> None:
    revs = {1: OLD, 2: OLD, 3: NEW}
    behind = plan_roll(state(2, revs), "h", views({1: 1}, lag={3: 500}), META)
    assert behind.partition == 2 and "catch up" in (behind.progress or "")
    unready = plan_roll(state(2, revs, ready={1, 2}), "h", views({1: 1}), META)
    assert unready.partition == 2 and "ready" in (unready.progress or "")


def test_a_full_roll_restarts_one_caught_up_pod_at_a_time() -> None:
    revs, ready, partition = dict(ALL_OLD), {1, 2, 3}, 3
    leaders = {1: 1, 2: 2, 3: 3, 4: 1}
    meta_leader = 1
    released: list[int] = []
    for _ in range(50):
        plan = plan_roll(state(partition, revs, ready), "h", views(leaders), meta(meta_leader))
        body = plan.step.body if plan.step is not None else None
        if isinstance(body, TransferLeader) and body.shard == 0:
            meta_leader = body.to
            continue
        if isinstance(body, TransferLeader):  # the node hands the shard over
            leaders[body.shard] = body.to
            continue
        if plan.partition < partition:
            node = plan.partition + 1
            assert node not in [*leaders.values(), meta_leader], "released a leader"
            assert ready == {1, 2, 3}, "released a pod while another was down"
            released.append(node)
        partition = plan.partition
        # The StatefulSet controller: restart one stale pod at or above the partition,
        # which comes back ready at the next look.
        ready = {1, 2, 3}
        for node in sorted(revs, reverse=True):
            if node - 1 >= partition and revs[node] == OLD:
                revs[node] = NEW
                ready = {1, 2, 3} - {node}
                break
        if plan.progress is None:
            break
    assert released == [3, 2, 1] and set(revs.values()) == {NEW} and partition == 0
