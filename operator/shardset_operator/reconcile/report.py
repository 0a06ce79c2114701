"""Phase 8 (pure): the status from what this reconcile saw and did."""

from __future__ import annotations

from shardset_operator.api.models import ShardSetStatus
from shardset_operator.api.observed import Seen
from shardset_operator.plan.bootstrap import first_map
from shardset_operator.plan.upgrade import RollPlan
from shardset_operator.reconcile.apply import Applied
from shardset_operator.reconcile.bootstrap import Bootstrap
from shardset_operator.reconcile.consistency import Switched
from shardset_operator.reconcile.context import Run
from shardset_operator.reconcile.membership import Membership
from shardset_operator.reconcile.operation import Work
from shardset_operator.status.conditions import Observation, compute_status
from shardset_operator.status.consistency import consistency_status
from shardset_operator.status.health import shard_health
from shardset_operator.status.progress import operation_text, rollout


def report_status(
    run: Run,
    boot: Bootstrap,
    seen: Seen,
    members: Membership,
    roll: RollPlan,
    applied: Applied,
    switched: Switched,
    work: Work,
) -> ShardSetStatus:
    sset = run.sset
    shard_map = members.live or boot.recorded or first_map(run.names, sset.spec)
    unanswered = [f"node {i}: {why}" for i, why in sorted(seen.errors.items())]
    obs = Observation(
        generation=sset.generation,
        nodes=sset.spec.nodes,
        ready_nodes=seen.ready_nodes,
        answered=len(seen.nodes.answering),
        shards=shard_health(seen.reports, shard_map.replicas, boot.shape.replication),
        consistency=consistency_status(
            run.reads, switched.reports, list(range(1, members.size + 1))
        ),
        consistency_target=run.reads.mode,
        bootstrap_written=applied.config_applied or boot.written is not None,
        rollout=roll.progress or rollout(applied.statefulset),
        refusals=boot.shape.refusals,
        consistency_errors=tuple(switched.errors or unanswered),
        failure=run.failure,
        unreachable=tuple(sorted(seen.errors)),
        operation=operation_text(work.journal, work.waiting),
    )
    status = compute_status(sset.status, obs, run.now)
    return status.model_copy(
        update={
            "members": members.members,
            "map_epoch": members.live.epoch if members.live is not None else sset.status.map_epoch,
            "journal": work.journal,
            "last_operation": work.last_operation,
            "unreachable": members.unreachable,
        }
    )
