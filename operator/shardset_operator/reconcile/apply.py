"""Phase 5: apply every owned object, whole (server-side apply), so a rerun after an
interruption converges the same way."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import kopf

from shardset_operator.api.consistency import ReadSetting
from shardset_operator.api.models import ShardSet
from shardset_operator.api.naming import Names
from shardset_operator.api.observed import Seen, StatefulSetState
from shardset_operator.api.settings import PolicySettings
from shardset_operator.builders.configmap import configmap
from shardset_operator.builders.networkpolicy import networkpolicy
from shardset_operator.builders.pdb import pdb
from shardset_operator.builders.services import client_service, peers_service
from shardset_operator.builders.statefulset import statefulset
from shardset_operator.clients.kube import KubeError
from shardset_operator.plan.shape import Shape
from shardset_operator.plan.upgrade import RollPlan
from shardset_operator.reconcile.bootstrap import Bootstrap
from shardset_operator.reconcile.context import Context, Run
from shardset_operator.reconcile.membership import Membership


@dataclass(frozen=True)
class Applied:
    config_applied: bool  # the ConfigMap (and so the bootstrap map) was applied
    statefulset: StatefulSetState | None  # as applied; as observed when the apply failed


def desired_objects(
    sset: ShardSet,
    names: Names,
    doc: str,
    image: str,
    shape: Shape,
    partition: int = 0,
    policy: PolicySettings | None = None,
) -> list[dict[str, Any]]:
    """Every owned object, in the order they are applied (config and the NetworkPolicy
    before the pods, so no pod ever runs with its peer and admin ports open).

    Sizes come from the shape, not the spec: a refused change must not loosen the
    disruption budget or start pods the store does not know."""
    reads = ReadSetting.of_spec(sset.spec.consistency)
    fence = [networkpolicy(names, policy)] if policy is not None else []
    return [
        *fence,
        configmap(names, doc, reads, created=sset.status.bootstrapped),
        peers_service(names),
        client_service(names),
        pdb(names, shape.replication),
        statefulset(names, sset.spec, image, shape.replicas, partition),
    ]


async def apply_objects(
    ctx: Context, run: Run, boot: Bootstrap, seen: Seen, members: Membership, roll: RollPlan
) -> Applied:
    """Stops at the first object that fails and records why in `run.failure` (the
    phases after it that act on the store are then skipped; status is still written)."""
    names = run.names
    config_applied = False
    sized = replace(boot.shape, replicas=members.size)
    objects = desired_objects(
        run.sset, names, boot.document, run.image, sized, roll.partition, ctx.policy
    )
    if ctx.policy_off:
        run.failure = await _remove_policy(ctx, names)
    for obj in objects:
        kopf.adopt(obj, owner=run.body)  # type: ignore[arg-type]
        try:
            await ctx.kube.apply(obj)
        except KubeError as e:
            run.failure = str(e)
            break
        config_applied = config_applied or obj["kind"] == "ConfigMap"
    if boot.consistency_changed and run.failure is None:
        run.notes.append(("ConsistencyChanging", f"reads switching to {run.reads.mode}"))
    applied = seen.statefulset
    if run.failure is None:
        try:  # as applied: the rollout it starts, if any, belongs to this status
            applied = await ctx.kube.statefulset(names.namespace, names.statefulset)
        except KubeError as e:
            run.failure = str(e)
    return Applied(config_applied, applied)


async def _remove_policy(ctx: Context, names: Names) -> str | None:
    """networkPolicy.enabled false: a policy made while it was on goes (level-based)."""
    try:
        await ctx.kube.delete_network_policy(names.namespace, names.name)
    except KubeError as e:
        return str(e)
    return None
