"""Carry out the store's one operation in progress: add nodes, move replicas, balance
leaders, remove nodes. Each round observes the nodes, asks the pure planners
(members, rebalance, moves, leaders) for the next step, and makes that one idempotent
admin call; it stops at a step that must wait (a learner catching up) or when the
round's time is up, and the next reconcile picks up from what the store reports.

The journal in status names the operation and the move in progress, so a restarted
operator finishes the same move before planning another (a new plan could pick a
different target and leave a half-added learner behind).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from shardset_operator.leaders import plan_transfer
from shardset_operator.members import MemberPlan, plan_members
from shardset_operator.models import Journal, MoveRecord, ShardSetSpec
from shardset_operator.moves import (
    META,
    ShardView,
    Step,
    call,
    cleanup_step,
    next_step,
    views_of,
    wait,
)
from shardset_operator.naming import Names
from shardset_operator.nodeclient import NodeCallError, NodeClient
from shardset_operator.observe import NodeViews, poll_nodes
from shardset_operator.rebalance import Move, PlanError, load, plan_moves
from shardset_operator.recovery import recovery_step
from shardset_operator.repair import (
    join_step,
    lost_replica_step,
    meta_step,
    meta_view,
    orphan_step,
)
from shardset_operator.splits import Split, plan_split
from shardset_proto.shardmap import NodeAddress

log = structlog.get_logger(__name__)

LOSS_WARNING = "writes the lost replicas had committed after that index are lost"
ROUND_SECONDS = 25.0  # one reconcile's share of an operation; the next goes on
POLL_SECONDS = 1.0  # between checks of a step that waits


@dataclass
class Round:
    """What one round did: the journal to record, events, and why it stopped."""

    journal: Journal | None
    notes: list[tuple[str, str]] = field(default_factory=list)
    waiting: str | None = None  # a step that waits, or a failed call, in words
    finished: str | None = None  # the operation that finished, in words


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
    `recover`: shards the user asked to recover (recovery.py)."""
    live = seen.live_map
    if live is None or not set(live.nodes) <= set(plan.targets) | set(plan.leaving):
        # No map, or one the membership plan did not trust: nothing is planned from it.
        operation = journal.operation if journal is not None else "waiting for the shard map"
        return Planned(operation, wait("no node gave a current shard map"))
    meta = meta_view(seen.reports)
    for node in plan.add:
        address = NodeAddress(names.peer_address(node), names.api_url(node))
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
    transfer = plan_transfer(views, plan.targets) if not plan.unreachable else None
    if transfer is not None:
        body = {"shard": transfer.shard, "to": transfer.target}
        t = transfer
        text = f"move leadership of shard {t.shard} from {t.source} to {t.target}"
        operation = journal.operation if journal is not None else "balance leaders"
        return Planned(operation, call("transfer-leader", transfer.source, body, text))
    return None


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
    body = {
        "shard": split.shard,
        "new_shard": split.new_shard,
        "start": split.start,
        "end": split.end,
    }
    slots = f"[{split.start}, {split.end})"
    text = f"split slots {slots} of shard {split.shard} into shard {split.new_shard}"
    return call("split-shard", leader, body, text)


def _remove_node(node: int, seen: NodeViews) -> Step:
    """Leadership of the metadata group first, then the node leaves the store."""
    meta = _meta_leader(seen)
    if meta == node:
        others = [n for n in _meta_voters(seen) if n != node and n in seen.answering]
        if not others:
            return wait(f"node {node} leads the metadata group and no other voter answers")
        return call(
            "transfer-leader",
            node,
            {"shard": 0, "to": others[0]},
            f"move metadata leadership from node {node} to {others[0]}",
        )
    return call("remove-node", META, {"node": node}, f"remove node {node} from the store")


def _meta_leader(seen: NodeViews) -> int | None:
    return meta_view(seen.reports).leader


def _meta_voters(seen: NodeViews) -> list[int]:
    return sorted(meta_view(seen.reports).voters)


async def run_round(
    nodes: NodeClient,
    names: Names,
    spec: ShardSetSpec,
    plan_of: Callable[[NodeViews], MemberPlan],
    ids: list[int],
    journal: Journal | None,
    now: Callable[[], datetime],
    budget_s: float = ROUND_SECONDS,
    progress: Callable[[Journal], Awaitable[None]] | None = None,
    recover: frozenset[int] = frozenset(),
) -> Round:
    """Steps until the work is done, a step must wait past the budget, or a call fails.
    `progress` is told the journal after every finished move (to show it in status)."""
    deadline = time.monotonic() + budget_s
    out = Round(journal)
    while True:
        seen = await poll_nodes(nodes, names, ids)
        planned = plan_step(spec, plan_of(seen), seen, names, out.journal, recover)
        if planned is None:
            if out.journal is not None:
                j = out.journal
                took = (now() - j.started_at).total_seconds()
                out.finished = f"{j.operation}: {j.moves_done} moves in {took:.0f} s"
                out.notes.append(("OperationDone", out.finished))
            out.journal = None
            return out
        out.journal = _journal(out.journal, planned, now())
        step = planned.step
        if step.kind == "done":
            assert planned.move is not None
            out.notes.append(("MoveDone", _describe(planned.move)))
            done = {"move": None, "moves_done": out.journal.moves_done + 1}
            out.journal = out.journal.model_copy(update=done)
            if progress is not None:
                await progress(out.journal)
            continue
        if step.kind == "wait":
            out.waiting = step.text
        else:
            failed = await _run(nodes, names, seen, step)
            if failed is None:
                log.info("step done", shardset=names.name, step=step.text)
                if step.action in ("add-node", "remove-node", "create-replica"):
                    out.notes.append(("StepDone", step.text))
                if step.action == "recover-shard":
                    out.notes.append(("ShardRecovered", f"{step.text}: {LOSS_WARNING}"))
                continue
            out.waiting = failed
        out.journal = out.journal.model_copy(update={"step": out.waiting or step.text})
        if time.monotonic() + POLL_SECONDS > deadline:
            return out
        await asyncio.sleep(POLL_SECONDS)


def _journal(journal: Journal | None, planned: Planned, now: datetime) -> Journal:
    move = planned.move
    record = MoveRecord(shard=move.shard, source=move.source, target=move.target) if move else None
    if journal is None or journal.operation != planned.operation:
        journal = Journal(operation=planned.operation, started_at=now, updated_at=now)
    changes = {"updated_at": now, "step": planned.step.text, "moves_left": planned.moves_left}
    if record is not None:
        changes["move"] = record
    return journal.model_copy(update=changes)


async def _run(nodes: NodeClient, names: Names, seen: NodeViews, step: Step) -> str | None:
    """Make the step's call; None when it worked, else why not (retried next round)."""
    at = step.at
    if at == META:
        at = _meta_leader(seen) or min(seen.answering, default=0)
        if at == 0:
            return "no node answers"
    try:
        await nodes.admin(names.api_url(at), step.action, step.body)
    except NodeCallError as e:
        # 409s (a conf change still pending, a node that still sees itself a member)
        # and 503s clear by themselves: the step is retried.
        log.warning("step failed", shardset=names.name, step=step.text, error=str(e))
        return f"{step.text}: {e}"
    return None


def _describe(move: Move) -> str:
    if move.source is None:
        return f"shard {move.shard}: replica added on node {move.target}"
    return f"shard {move.shard}: replica moved from node {move.source} to node {move.target}"
