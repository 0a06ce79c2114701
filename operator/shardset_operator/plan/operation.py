"""The next step of the store's one operation in progress (pure): add nodes, repair,
recover, split, move replicas, clean up, remove nodes, balance leaders. It asks the
other planners (members, repair, recovery, splits, rebalance, moves, leaders) in that
order of priority; reconcile/operation.py makes the step's admin call.

The journal in status names the operation and the move in progress, so a restarted
operator finishes the same move before planning another (a new plan could pick a
different target and leave a half-added learner behind).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from shardset_operator.api.models import Journal, MoveRecord, ShardSetSpec
from shardset_operator.api.naming import Names
from shardset_operator.api.observed import NodeViews
from shardset_operator.plan.leaders import plan_transfer
from shardset_operator.plan.members import MemberPlan, plan_members
from shardset_operator.plan.moves import (
    META,
    ShardView,
    Step,
    call,
    cleanup_step,
    next_step,
    views_of,
    wait,
)
from shardset_operator.plan.rebalance import Move, PlanError, load, plan_moves
from shardset_operator.plan.recovery import recovery_step
from shardset_operator.plan.repair import (
    join_step,
    lost_replica_step,
    meta_step,
    meta_view,
    orphan_step,
)
from shardset_operator.plan.splits import Split, plan_split
from shardset_proto.admin import RemoveNode, SplitShard, TransferLeader
from shardset_proto.shardmap import ShardMap
from shardset_proto.status import META_GROUP


@dataclass(frozen=True)
class Planned:
    """The next step and the operation it belongs to."""

    operation: str
    step: Step
    move: Move | None = None
    moves_left: int = 0


def planner(
    nodes: int, gone: set[int], min_epoch: int | None = None
) -> Callable[[NodeViews], MemberPlan]:
    """Membership plans from each fresh observation; a shard map older than
    `min_epoch` (from a node cut off from the metadata group) plans nothing."""

    def plan_of(views: NodeViews) -> MemberPlan:
        live = views.trusted_map(min_epoch)
        if live is None:
            return plan_members(nodes, [], views.answering, gone, {})
        return plan_members(nodes, sorted(live.nodes), views.answering, gone, live.replicas)

    return plan_of


def plan_step(
    spec: ShardSetSpec,
    plan: MemberPlan,
    seen: NodeViews,
    names: Names,
    journal: Journal | None,
    recover: frozenset[int] = frozenset(),
) -> Planned | None:
    """The next step of the store's work, or None when there is nothing to do (pure).
    `recover`: shards the user asked to recover (plan/recovery.py)."""
    live = seen.live_map
    if live is None or not set(live.nodes) <= set(plan.targets) | set(plan.leaving):
        # No map, or one the membership plan did not trust: nothing is planned from it.
        operation = journal.operation if journal is not None else "waiting for the shard map"
        return Planned(operation, wait("no node gave a current shard map"))
    meta = meta_view(seen.reports)
    for node in plan.add:
        address = names.node_address(node)
        return Planned(f"scale up to {spec.nodes} nodes", join_step(node, meta, address))
    views = views_of(seen.reports, live.replicas)
    rescue = recovery_step(
        recover, live, views, seen.reports, plan.targets, spec.replication_factor
    )
    if rescue is not None:
        return Planned("recover shards that lost their quorum", rescue)
    resumed = _resumed(journal, plan, live.replicas, seen)
    busy = (resumed.shard, resumed.target) if resumed is not None else None
    repair = lost_replica_step(views, seen.answering, busy) or meta_step(
        meta, plan, seen.answering, live.nodes
    )
    if repair is not None:
        operation = journal.operation if journal is not None else "repair membership"
        return Planned(operation, repair)
    return _placement_step(spec, plan, seen, journal, live, views, resumed)


def _placement_step(
    spec: ShardSetSpec,
    plan: MemberPlan,
    seen: NodeViews,
    journal: Journal | None,
    live: ShardMap,
    views: dict[int, ShardView],
    resumed: Move | None,
) -> Planned | None:
    """Once members and repairs are done: a move (resumed, an excess voter, a split or
    the rebalancer's next), leftovers to clean up, a node to remove, leaders to balance."""
    move = resumed or _excess(views, plan, spec.replication_factor)
    split = plan_split(live, spec.shards)
    if move is None and split is not None and not spec.rebalance.paused and not plan.unreachable:
        return Planned(f"split shards to {spec.shards}", _split_step(split, views))
    if move is None and not spec.rebalance.paused and not plan.unreachable:
        try:
            moves = plan_moves(live.replicas, plan.targets, spec.replication_factor, 1)
        except PlanError:
            moves = []  # fewer usable nodes than replicas: nothing can move (see status)
        move = moves[0] if moves else None
    if move is not None:
        left = _moves_left(live.replicas, plan, spec.replication_factor)
        step = next_step(move, views[move.shard])
        return Planned(_operation(spec, plan, journal), step, move, left)
    cleanup = cleanup_step(views, frozenset()) or orphan_step(seen.reports, set(live.replicas))
    if cleanup is not None:
        return Planned(_operation(spec, plan, journal), cleanup)
    if spec.rebalance.paused:
        return None
    for node in plan.remove:
        return Planned(_operation(spec, plan, journal), _remove_node(node, seen))
    return _balance_leaders(views, plan, journal)


def _balance_leaders(
    views: dict[int, ShardView], plan: MemberPlan, journal: Journal | None
) -> Planned | None:
    transfer = plan_transfer(views, plan.targets) if not plan.unreachable else None
    if transfer is None:
        return None
    t = transfer
    body = TransferLeader(shard=t.shard, to=t.target)
    text = f"move leadership of shard {t.shard} from {t.source} to {t.target}"
    operation = journal.operation if journal is not None else "balance leaders"
    return Planned(operation, call(body, t.source, text))


def _resumed(
    journal: Journal | None,
    plan: MemberPlan,
    replicas: dict[int, tuple[int, ...]],
    seen: NodeViews,
) -> Move | None:
    """The journal's move, if it can still go on (its target is still wanted, answers)."""
    if journal is None or journal.move is None:
        return None
    m = journal.move
    if m.shard not in replicas or m.target not in plan.targets or m.target not in seen.answering:
        return None
    return Move(m.shard, m.source, m.target)


def _excess(views: dict[int, ShardView], plan: MemberPlan, rf: int) -> Move | None:
    """A shard with more voters than the replication factor (a move interrupted after
    its promotion, whose journal entry was lost): finish it by removing the voter on a
    leaving node, else on the busiest node, keeping the leader if it can."""
    counts = load({s: tuple(v.voters) for s, v in views.items()}, plan.targets)
    for shard, v in sorted(views.items()):
        if v.leader is None or len(v.voters) <= rf:
            continue
        victim = max(
            v.voters, key=lambda n: (n in plan.leaving, counts.get(n, 0), n != v.leader, n)
        )
        keeper = v.leader if v.leader != victim else min(v.voters - {victim})
        return Move(shard, victim, keeper)
    return None


def _moves_left(replicas: dict[int, tuple[int, ...]], plan: MemberPlan, rf: int) -> int:
    try:
        return len(plan_moves(replicas, plan.targets, rf, max_moves=len(replicas)))
    except PlanError:
        return 0


def _operation(spec: ShardSetSpec, plan: MemberPlan, journal: Journal | None) -> str:
    if journal is not None and journal.operation != "balance leaders":
        return journal.operation
    gone = [n for n in plan.leaving if n <= spec.nodes]
    if gone:
        return f"failover: rebuild the replicas of node {', '.join(map(str, gone))} elsewhere"
    if plan.leaving:
        return f"scale down to {spec.nodes} nodes"
    return "rebalance replicas"


def _split_step(split: Split, views: dict[int, ShardView]) -> Step:
    leader = views[split.shard].leader
    if leader is None:
        return wait(f"shard {split.shard} has no leader to split")
    body = SplitShard(
        shard=split.shard, new_shard=split.new_shard, start=split.start, end=split.end
    )
    slots = f"[{split.start}, {split.end})"
    text = f"split slots {slots} of shard {split.shard} into shard {split.new_shard}"
    return call(body, leader, text)


def _remove_node(node: int, seen: NodeViews) -> Step:
    """Leadership of the metadata group first, then the node leaves the store."""
    meta = meta_leader(seen)
    if meta == node:
        others = [n for n in _meta_voters(seen) if n != node and n in seen.answering]
        if not others:
            return wait(f"node {node} leads the metadata group and no other voter answers")
        return call(
            TransferLeader(shard=META_GROUP, to=others[0]),
            node,
            f"move metadata leadership from node {node} to {others[0]}",
        )
    return call(RemoveNode(node=node), META, f"remove node {node} from the store")


def meta_leader(seen: NodeViews) -> int | None:
    """The metadata group's leader as the nodes report it (where META steps go)."""
    return meta_view(seen.reports).leader


def _meta_voters(seen: NodeViews) -> list[int]:
    return sorted(meta_view(seen.reports).voters)


def journal_after(journal: Journal | None, planned: Planned, now: datetime) -> Journal:
    """The journal once `planned` is its current step (a new one for a new operation)."""
    move = planned.move
    record = MoveRecord(shard=move.shard, source=move.source, target=move.target) if move else None
    if journal is None or journal.operation != planned.operation:
        journal = Journal(operation=planned.operation, started_at=now, updated_at=now)
    changes = {"updated_at": now, "step": planned.step.text, "moves_left": planned.moves_left}
    if record is not None:
        changes["move"] = record
    return journal.model_copy(update=changes)


def describe_move(move: Move) -> str:
    if move.source is None:
        return f"shard {move.shard}: replica added on node {move.target}"
    return f"shard {move.shard}: replica moved from node {move.source} to node {move.target}"
