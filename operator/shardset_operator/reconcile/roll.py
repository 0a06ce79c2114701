"""Phase 4: a changed pod template rolls one node at a time, leaderships moved first
(plan/upgrade.py plans it; this phase makes the leadership transfers)."""

from __future__ import annotations

import asyncio

import structlog

from shardset_operator.api.naming import Names
from shardset_operator.api.observed import Seen
from shardset_operator.builders.statefulset import statefulset, template_hash
from shardset_operator.clients.nodeclient import NodeCallError
from shardset_operator.clients.observe import poll_nodes
from shardset_operator.plan.moves import views_of
from shardset_operator.plan.repair import meta_view
from shardset_operator.plan.upgrade import RollPlan, RollState, plan_roll, roll_state
from shardset_operator.reconcile.context import Context, Run
from shardset_operator.reconcile.membership import Membership

log = structlog.get_logger(__name__)

ROLL_TRANSFERS = 16  # leadership transfers one reconcile makes before releasing a pod
TRANSFER_SETTLE_S = 0.3  # a transfer completes within a heartbeat round or two


async def roll_pods(ctx: Context, run: Run, seen: Seen, members: Membership) -> RollPlan:
    """The StatefulSet's partition to apply, and the roll's progress in words."""
    names = run.names
    desired_hash = template_hash(statefulset(names, run.sset.spec, run.image, members.size))
    views = views_of(seen.reports, members.replicas)
    state = roll_state(seen, names)
    roll = plan_roll(state, desired_hash, views, meta_view(seen.reports))
    if roll.step is not None:
        roll, moved = await clear_leaderships(
            ctx, names, state, desired_hash, members.replicas, roll
        )
        run.notes.extend(("LeadershipMoved", text) for text in moved)
    return roll


async def clear_leaderships(
    ctx: Context,
    names: Names,
    state: RollState | None,
    desired_hash: str,
    replicas: dict[int, tuple[int, ...]],
    roll: RollPlan,
) -> tuple[RollPlan, list[str]]:
    """Transfer the leaderships off the next pod to restart, re-planning after each,
    so the pod can be released in this same reconcile."""
    moved: list[str] = []
    ids = sorted({n for holders in replicas.values() for n in holders})
    for _ in range(ROLL_TRANSFERS):
        step = roll.step
        if step is None or step.body is None:
            break
        try:
            await ctx.nodes.admin(names.node_admin(step.at), step.body)
        except NodeCallError as e:
            log.warning("leadership transfer failed", step=step.text, error=str(e))
            break
        moved.append(step.text)
        await asyncio.sleep(TRANSFER_SETTLE_S)
        seen = await poll_nodes(ctx.nodes, names, ids)
        roll = plan_roll(
            state, desired_hash, views_of(seen.reports, replicas), meta_view(seen.reports)
        )
    return roll, moved
