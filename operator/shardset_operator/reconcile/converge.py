"""One reconcile of a ShardSet: observe, plan with pure functions, apply idempotently.

Safe to interrupt and rerun at any point: every step applies a whole desired object
(server-side apply) or an idempotent node call, and every input is read afresh from
the cluster and the nodes. Nothing is kept in memory between runs.

`converge` is the list of phases, one module each. When the bootstrap map or the
API server cannot be read, the reconcile stops there with Progressing=False. When the
certificates cannot be kept or an apply fails, the phases that act on the store
(consistency switch, operation) are skipped and the status still says what was seen.
A failed leadership transfer or admin call only makes its phase wait for the next
reconcile.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from shardset_operator.reconcile.apply import apply_objects
from shardset_operator.reconcile.bootstrap import read_bootstrap
from shardset_operator.reconcile.consistency import switch_consistency
from shardset_operator.reconcile.context import Context, Outcome, PhaseFailed, Run
from shardset_operator.reconcile.membership import plan_membership
from shardset_operator.reconcile.observe import observe_store
from shardset_operator.reconcile.operation import advance_operation
from shardset_operator.reconcile.report import report_status
from shardset_operator.reconcile.roll import roll_pods
from shardset_operator.reconcile.tls import node_client, prepare_tls, rotate_tls


async def converge(body: dict[str, Any], ctx: Context) -> Outcome:
    run = Run.of(body, ctx.node_image)
    try:
        boot = await read_bootstrap(ctx, run)
        run.names = replace(run.names, tls=boot.shape.tls)  # as the store was created
        ids = range(1, max(run.sset.spec.nodes, max(boot.known, default=0)) + 1)
        tls = await prepare_tls(ctx, run, ids)  # before observe: the client's certificate
        ctx = replace(ctx, nodes=node_client(ctx, run, tls))
        seen = await observe_store(ctx, run, boot)
    except PhaseFailed as e:
        return run.failed(str(e))
    tls = await rotate_tls(ctx, run, tls, seen, ids)
    members = plan_membership(run, boot, seen)
    roll = await roll_pods(ctx, run, seen, members)
    applied = await apply_objects(ctx, run, boot, seen, members, roll)
    switched = await switch_consistency(ctx, run, seen)
    work = await advance_operation(ctx, run, boot.shape, members, roll)
    status = report_status(run, boot, seen, members, roll, applied, switched, work)
    status = status.model_copy(update={"tls": tls.status})
    return Outcome(status=status, notes=run.notes, failure=run.failure)
