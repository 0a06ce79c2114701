"""Rolling changes of the pod template (image, resources, ...), one node at a time (pure).

The StatefulSet's rolling update is held with its `partition` (pods with an ordinal
below it keep the old template) and released one pod at a time, highest ordinal first,
only when: every pod is ready, every shard is led and no replica is behind, and the
next pod leads nothing (its leaderships are transferred away first, so its shards
never wait for an election). The pod is then restarted by the StatefulSet controller;
the next one waits until it is back, ready and caught up. A node's own SIGTERM handler
transfers leadership too (for kubectl drain and other evictions, which the
PodDisruptionBudget paces).

The partition is the only state, and it lives in the StatefulSet: rerun at any point,
the plan reads it back. A changed template is recognised by a hash of it kept in an
annotation, so the very apply that changes it already holds every pod.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from shardset_operator.api.naming import TEMPLATE_HASH, Names, node_id_of_pod
from shardset_operator.api.observed import Seen
from shardset_operator.plan.moves import CATCH_UP_LAG, ShardView, Step, call
from shardset_operator.plan.repair import MetaView
from shardset_proto.admin import TransferLeader
from shardset_proto.status import META_GROUP


@dataclass(frozen=True)
class RollState:
    """The StatefulSet and its pods as observed."""

    replicas: int
    partition: int
    applied_hash: str | None  # the template hash the last apply recorded
    update_revision: str | None
    pods: Mapping[int, tuple[str | None, bool]]  # node id -> (revision, ready)


def roll_state(seen: Seen, names: Names) -> RollState | None:
    """The roll's inputs from an observation; None before the StatefulSet exists."""
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


@dataclass(frozen=True)
class RollPlan:
    partition: int
    step: Step | None = None  # a leadership transfer to make before releasing a pod
    progress: str | None = None  # what the roll is doing, in words; None: no roll


def plan_roll(
    state: RollState | None,
    desired_hash: str,
    views: Mapping[int, ShardView],
    meta: MetaView,
) -> RollPlan:
    if state is None:
        return RollPlan(0)  # a new store: every pod starts at once
    if state.applied_hash != desired_hash:
        return RollPlan(state.replicas, progress="new pod template: holding every pod")
    ids = range(1, state.replicas + 1)
    stale = [n for n in ids if state.pods.get(n, (None, False))[0] != state.update_revision]
    if not stale or state.update_revision is None:
        return RollPlan(0)
    nxt = max(stale)
    done = state.replicas - len(stale)
    where = f"{done}/{state.replicas} nodes on the new template"
    if state.partition <= nxt - 1:
        return RollPlan(state.partition, progress=f"restarting node {nxt}; {where}")
    wait = _gate(state, views)
    if wait is not None:
        return RollPlan(state.partition, progress=f"{wait}; {where}")
    transfer = _leadership_off(nxt, views, meta)
    if transfer is not None:
        return RollPlan(state.partition, transfer, f"{transfer.text}; {where}")
    return RollPlan(nxt - 1, progress=f"restarting node {nxt}; {where}")


def _gate(state: RollState, views: Mapping[int, ShardView]) -> str | None:
    """Why the next pod must not restart yet, or None."""
    unready = sorted(n for n, (_, ready) in state.pods.items() if not ready)
    missing = sorted(set(range(1, state.replicas + 1)) - set(state.pods))
    if unready or missing:
        return f"waiting for nodes {unready + missing} to be ready"
    leaderless = sorted(s for s, v in views.items() if v.leader is None)
    if leaderless:
        return f"waiting for shards {leaderless} to elect a leader"
    behind = sorted(
        f"{n} on shard {s}"
        for s, v in views.items()
        for n in v.voters
        if v.lag.get(n, CATCH_UP_LAG + 1) > CATCH_UP_LAG
    )
    if behind:
        return f"waiting for replicas to catch up: node {', node '.join(behind)}"
    return None


def _leadership_off(node: int, views: Mapping[int, ShardView], meta: MetaView) -> Step | None:
    for s, v in sorted(views.items()):
        if v.leader == node:
            others = sorted(v.voters - {node}, key=lambda n: (v.lag.get(n, 0), n))
            if others:
                text = f"move leadership of shard {s} off node {node} (to {others[0]})"
                return call(TransferLeader(shard=s, to=others[0]), node, text)
    if meta.leader == node:
        others = sorted(meta.voters - {node}, key=lambda n: (meta.lag.get(n, 0), n))
        if others:
            text = f"move metadata leadership off node {node} (to {others[0]})"
            return call(TransferLeader(shard=META_GROUP, to=others[0]), node, text)
    return None
