"""One reconcile of a ShardSet: observe, plan with pure functions, apply idempotently.

Safe to interrupt and rerun at any point: every step applies a whole desired object
(server-side apply) or an idempotent node call, and every input is read afresh from
the cluster and the nodes. Nothing is kept in memory between runs.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import kopf
import structlog

from shardset_operator import bootstrap
from shardset_operator.builders.configmap import configmap
from shardset_operator.builders.pdb import pdb
from shardset_operator.builders.services import client_service, peers_service
from shardset_operator.builders.statefulset import statefulset
from shardset_operator.consistency import ReadSetting, consistency_status, nodes_to_switch
from shardset_operator.health import shard_health
from shardset_operator.kube import Kube, KubeError
from shardset_operator.members import gone_nodes, plan_members
from shardset_operator.models import Journal, ShardSet, ShardSetStatus, Unreachable
from shardset_operator.moves import views_of
from shardset_operator.naming import Names, node_id_of_pod
from shardset_operator.nodeclient import NodeCallError, NodeClient
from shardset_operator.observe import Seen, observe, poll_nodes, rollout
from shardset_operator.operation import planner, run_round
from shardset_operator.recovery import requested
from shardset_operator.repair import meta_view
from shardset_operator.shape import Shape, plan_shape
from shardset_operator.status import Observation, compute_status, with_failure
from shardset_operator.upgrade import (
    TEMPLATE_HASH,
    RollPlan,
    RollState,
    plan_roll,
    template_hash,
)
from shardset_proto.shardmap import ShardMap

log = structlog.get_logger(__name__)


@dataclass
class Context:
    """What handlers share: API clients and the operator's settings."""

    kube: Kube
    nodes: NodeClient
    node_image: str


@dataclass
class Outcome:
    status: ShardSetStatus
    notes: list[tuple[str, str]] = field(default_factory=list)  # (reason, message) events
    failure: str | None = None


def desired_objects(
    sset: ShardSet, names: Names, doc: str, image: str, shape: Shape, partition: int = 0
) -> list[dict[str, Any]]:
    """Every owned object, in the order they are applied (config before the pods).

    Sizes come from the shape, not the spec: a refused change must not loosen the
    disruption budget or start pods the store does not know."""
    reads = ReadSetting.of_spec(sset.spec.consistency)
    return [
        configmap(names, doc, reads, created=sset.status.bootstrapped),
        peers_service(names),
        client_service(names),
        pdb(names, shape.replication),
        statefulset(names, sset.spec, image, shape.replicas, partition),
    ]


async def converge(body: dict[str, Any], ctx: Context) -> Outcome:
    sset = ShardSet.from_body(body)
    names = Names(sset.name, sset.namespace)
    notes: list[tuple[str, str]] = []
    failure: str | None = None
    reads = ReadSetting.of_spec(sset.spec.consistency)
    now = datetime.now(UTC)

    # Plan: the bootstrap map is kept once written; the shape follows it.
    try:
        existing = await ctx.kube.configmap_data(names.namespace, names.configmap)
    except KubeError as e:
        return _failed(sset, str(e))
    written = (existing or {}).get(bootstrap.BOOTSTRAP_KEY)
    try:
        recorded = bootstrap.recorded_map(written)
    except (ValueError, KeyError, TypeError) as e:
        message = (
            f"ConfigMap {names.configmap} holds an unreadable {bootstrap.BOOTSTRAP_KEY} ({e}); "
            "it is the store's identity and is never rewritten: restore it"
        )
        return _failed(sset, message)
    shape = plan_shape(sset.spec, recorded)
    doc = bootstrap.bootstrap_document(names, sset.spec, written)
    if written is None:
        notes.append(
            (
                "BootstrapMapWritten",
                f"first shard map of {sset.spec.shards} shards "
                f"on {shape.replicas} nodes, replication {sset.spec.replication_factor}",
            )
        )
    consistency_changed = existing is not None and any(
        existing.get(k) != v for k, v in reads.configmap_data().items()
    )

    # Observe before applying: the StatefulSet's size follows the store's membership.
    known = sset.status.members or (sorted(recorded.nodes) if recorded else [])
    try:
        seen = await observe(
            ctx.kube, ctx.nodes, names, max(sset.spec.nodes, max(known, default=0))
        )
    except KubeError as e:
        return _failed(sset, str(e), notes)
    live = seen.nodes.trusted_map(sset.status.map_epoch)
    unreachable = track_unreachable(sset.status.unreachable, live, seen.nodes.answering, now)
    members = sorted(live.nodes) if live is not None else known
    gone = gone_nodes(
        {u.node: u.since.timestamp() for u in unreachable},
        now.timestamp(),
        sset.spec.failover.node_gone_after_seconds,
    )
    replicas = live.replicas if live is not None else {}
    members_plan = plan_members(sset.spec.nodes, members, seen.nodes.answering, gone, replicas)
    size = shape.replicas
    if recorded is not None:
        # Never shrink on a guess: without a trusted map, keep every pod there is.
        running = seen.statefulset.replicas if seen.statefulset is not None else 0
        size = members_plan.statefulset_replicas if live is not None else max(size, running)

    # A changed pod template rolls one node at a time, leaderships moved first.
    image = sset.spec.image or ctx.node_image
    desired_hash = template_hash(statefulset(names, sset.spec, image, size))
    views = views_of(seen.reports, replicas)
    state = roll_state(seen, names)
    roll = plan_roll(state, desired_hash, views, meta_view(seen.reports))
    if roll.step is not None:
        roll, moved = await clear_leaderships(ctx, names, state, desired_hash, replicas, roll)
        notes.extend(("LeadershipMoved", text) for text in moved)

    # Apply: whole objects, so a rerun after an interruption converges the same way.
    config_applied = False
    sized = replace(shape, replicas=size)
    for obj in desired_objects(sset, names, doc, image, sized, roll.partition):
        kopf.adopt(obj, owner=body)  # type: ignore[arg-type]
        try:
            await ctx.kube.apply(obj)
        except KubeError as e:
            failure = str(e)
            break
        config_applied = config_applied or obj["kind"] == "ConfigMap"
    if consistency_changed and failure is None:
        notes.append(("ConsistencyChanging", f"reads switching to {reads.mode}"))
    applied = seen.statefulset
    if failure is None:
        try:  # as applied: the rollout it starts, if any, belongs to this status
            applied = await ctx.kube.statefulset(names.namespace, names.statefulset)
        except KubeError as e:
            failure = str(e)

    # Switch nodes' read consistency live (only after the ConfigMap holds the new mode,
    # so a node restarting meanwhile comes up in it too).
    reports = {
        i: (ReadSetting.of_report(r) if r is not None else None) for i, r in seen.reports.items()
    }
    reachable = seen.nodes.answering
    errors: list[str] = [f"node {i}: {why}" for i, why in sorted(seen.errors.items())]
    switch_errors: list[str] = []
    if failure is None:
        for node in nodes_to_switch(reads, reports, reachable):
            try:
                await ctx.nodes.set_consistency(names.api_url(node), reads.admin_body())
            except NodeCallError as e:
                switch_errors.append(f"node {node}: {e}")
                continue
            reports[node] = reads
            notes.append(("ConsistencyApplied", f"node {node} now reads {reads.mode}"))

    # The one operation in progress (scaling, rebalancing, failover), a round of it;
    # not while pods restart for a new template.
    journal, waiting, last_operation = sset.status.journal, None, sset.status.last_operation
    ready_for_work = sset.status.bootstrapped and not shape.refusals and roll.progress is None
    if failure is None and ready_for_work and live is not None:
        ids = list(range(1, max(size, max(members, default=0)) + 1))
        plan_of = planner(sset.spec.nodes, gone, live.epoch)

        async def progress(j: Journal) -> None:
            body = {"journal": j.model_dump(by_alias=True, exclude_none=True, mode="json")}
            try:
                await ctx.kube.patch_shardset_status(names.namespace, names.name, body)
            except KubeError as e:  # progress display only: the round goes on
                log.warning("progress not shown in status", error=str(e))

        recover = requested(body.get("metadata", {}).get("annotations"))
        done = await run_round(
            ctx.nodes,
            names,
            sset.spec,
            plan_of,
            ids,
            journal,
            _now,
            progress=progress,
            recover=recover,
        )
        journal, waiting = done.journal, done.waiting
        last_operation = done.finished or last_operation
        notes.extend(done.notes)

    shard_map = live or recorded or bootstrap.first_map(names, sset.spec)
    obs = Observation(
        generation=sset.generation,
        nodes=sset.spec.nodes,
        ready_nodes=seen.ready_nodes,
        answered=len(reachable),
        shards=shard_health(seen.reports, shard_map.replicas, shape.replication),
        consistency=consistency_status(reads, reports, list(range(1, size + 1))),
        consistency_target=reads.mode,
        bootstrap_written=config_applied or written is not None,
        rollout=roll.progress or rollout(applied),
        refusals=shape.refusals,
        consistency_errors=tuple(switch_errors or errors),
        failure=failure,
        unreachable=tuple(sorted(seen.errors)),
        operation=_operation_text(journal, waiting),
    )
    status = compute_status(sset.status, obs, now)
    status = status.model_copy(
        update={
            "members": members,
            "map_epoch": live.epoch if live is not None else sset.status.map_epoch,
            "journal": journal,
            "last_operation": last_operation,
            "unreachable": unreachable,
        }
    )
    return Outcome(status=status, notes=notes, failure=failure)


ROLL_TRANSFERS = 16  # leadership transfers one reconcile makes before releasing a pod
TRANSFER_SETTLE_S = 0.3  # a transfer completes within a heartbeat round or two


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
        if step is None:
            break
        try:
            await ctx.nodes.admin(names.api_url(step.at), step.action, step.body)
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


def roll_state(seen: Seen, names: Names) -> RollState | None:
    sts = seen.statefulset
    if sts is None:
        return None
    pods = {}
    for pod in seen.pods:
        node = node_id_of_pod(pod.name, names)
        if node is not None:
            pods[node] = (pod.revision, pod.ready and not pod.terminating)
    return RollState(
        replicas=sts.replicas,
        partition=sts.partition,
        applied_hash=(sts.annotations or {}).get(TEMPLATE_HASH),
        update_revision=sts.update_revision,
        pods=pods,
    )


def _now() -> datetime:
    return datetime.now(UTC)


def track_unreachable(
    previous: list[Unreachable], live: ShardMap | None, answering: set[int], now: datetime
) -> list[Unreachable]:
    """Members not answering and since when (the first reconcile that missed them)."""
    if live is None:
        return previous
    since = {u.node: u.since for u in previous}
    return [
        Unreachable(node=n, since=since.get(n, now))
        for n in sorted(live.nodes)
        if n not in answering
    ]


def _operation_text(journal: Journal | None, waiting: str | None) -> str | None:
    if journal is None:
        return None
    text = f"{journal.operation}: {journal.moves_done} moves done"
    if journal.moves_left:
        text += f", {journal.moves_left} left"
    return f"{text}; {waiting or journal.step}"


def _failed(sset: ShardSet, message: str, notes: list[tuple[str, str]] | None = None) -> Outcome:
    status = with_failure(sset.status, sset.generation, message, datetime.now(UTC))
    return Outcome(status=status, notes=notes or [], failure=message)
