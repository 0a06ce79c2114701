"""Phase 7: a round of the store's one operation in progress (add nodes, move replicas,
balance leaders, remove nodes, split, repair, recover). Each step of a round observes
the nodes, asks plan/operation.py for the next step, and makes that one idempotent
admin call; the round stops at a step that must wait (a learner catching up) or when
its time is up, and the next reconcile picks up from what the store reports.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from shardset_operator.api.models import Journal, ShardSetSpec
from shardset_operator.api.naming import Names
from shardset_operator.api.observed import NodeViews
from shardset_operator.clients.kube import KubeError
from shardset_operator.clients.nodeclient import NodeCallError, NodeClient
from shardset_operator.clients.observe import poll_nodes
from shardset_operator.plan.members import MemberPlan
from shardset_operator.plan.moves import META, Step
from shardset_operator.plan.operation import (
    describe_move,
    journal_after,
    meta_leader,
    plan_step,
    planner,
)
from shardset_operator.plan.recovery import requested
from shardset_operator.plan.shape import Shape
from shardset_operator.plan.upgrade import RollPlan
from shardset_operator.reconcile.context import Context, Run
from shardset_operator.reconcile.membership import Membership
from shardset_proto.admin import AdminAction

log = structlog.get_logger(__name__)

LOSS_WARNING = "writes the lost replicas had committed after that index are lost"
ROUND_SECONDS = 25.0  # one reconcile's share of an operation; the next goes on
POLL_SECONDS = 1.0  # between checks of a step that waits
# Steps that change who is in the store: each one is announced with an Event.
NOTED = frozenset({AdminAction.ADD_NODE, AdminAction.REMOVE_NODE, AdminAction.CREATE_REPLICA})


@dataclass(frozen=True)
class Work:
    """The operation as this reconcile leaves it, for status."""

    journal: Journal | None
    waiting: str | None
    last_operation: str | None


async def advance_operation(
    ctx: Context, run: Run, shape: Shape, members: Membership, roll: RollPlan
) -> Work:
    """A round, unless the apply failed, the store is not bootstrapped, a spec change
    is refused, pods restart for a new template, or no shard map can be trusted."""
    status, names = run.sset.status, run.names
    ready_for_work = status.bootstrapped and not shape.refusals and roll.progress is None
    live = members.live
    if run.failure is not None or not ready_for_work or live is None:
        return Work(status.journal, None, status.last_operation)
    ids = list(range(1, max(members.size, max(members.members, default=0)) + 1))

    async def progress(j: Journal) -> None:
        body = {"journal": j.model_dump(by_alias=True, exclude_none=True, mode="json")}
        try:
            await ctx.kube.patch_shardset_status(names.namespace, names.name, body)
        except KubeError as e:  # progress display only: the round goes on
            log.warning("progress not shown in status", error=str(e))

    done = await run_round(
        ctx.nodes,
        names,
        run.sset.spec,
        planner(run.sset.spec.nodes, members.gone, live.epoch),
        ids,
        status.journal,
        _now,
        progress=progress,
        recover=requested(run.body.get("metadata", {}).get("annotations")),
    )
    run.notes.extend(done.notes)
    return Work(done.journal, done.waiting, done.finished or status.last_operation)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Round:
    """What one round did: the journal to record, events, and why it stopped."""

    journal: Journal | None
    notes: list[tuple[str, str]] = field(default_factory=list)
    waiting: str | None = None  # a step that waits, or a failed call, in words
    finished: str | None = None  # the operation that finished, in words


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
        out.journal = journal_after(out.journal, planned, now())
        step = planned.step
        if step.kind == "done":
            assert planned.move is not None
            out.notes.append(("MoveDone", describe_move(planned.move)))
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
                if step.action in NOTED:
                    out.notes.append(("StepDone", step.text))
                if step.action == AdminAction.RECOVER_SHARD:
                    out.notes.append(("ShardRecovered", f"{step.text}: {LOSS_WARNING}"))
                continue
            out.waiting = failed
        out.journal = out.journal.model_copy(update={"step": out.waiting or step.text})
        if time.monotonic() + POLL_SECONDS > deadline:
            return out
        await asyncio.sleep(POLL_SECONDS)


async def _run(nodes: NodeClient, names: Names, seen: NodeViews, step: Step) -> str | None:
    """Make the step's call; None when it worked, else why not (retried next round)."""
    at = step.at
    if at == META:
        at = meta_leader(seen) or min(seen.answering, default=0)
        if at == 0:
            return "no node answers"
    assert step.body is not None, "a call step carries its admin body"
    try:
        await nodes.admin(names.node_admin(at), step.body)
    except NodeCallError as e:
        # 409s (a conf change still pending, a node that still sees itself a member)
        # and 503s clear by themselves: the step is retried.
        log.warning("step failed", shardset=names.name, step=step.text, error=str(e))
        return f"{step.text}: {e}"
    return None
