"""Phase 6: switch the nodes' read consistency live, only after the ConfigMap holds the
new setting (so a node restarting meanwhile comes up in it too)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from shardset_operator.api.consistency import ReadSetting
from shardset_operator.api.observed import Seen
from shardset_operator.clients.nodeclient import NodeCallError
from shardset_operator.plan.consistency import nodes_to_switch
from shardset_operator.reconcile.context import Context, Run


@dataclass(frozen=True)
class Switched:
    reports: dict[int, ReadSetting | None]  # each node's setting, after the switches
    errors: list[str]  # nodes that could not be switched, and why


async def switch_consistency(ctx: Context, run: Run, seen: Seen) -> Switched:
    """Skipped when the apply failed (the ConfigMap may not hold the setting)."""
    reports = {
        i: (ReadSetting.of_report(r) if r is not None else None) for i, r in seen.reports.items()
    }
    errors: list[str] = []
    if run.failure is not None:
        return Switched(reports, errors)
    for node in nodes_to_switch(run.reads, reports, seen.nodes.answering):
        try:
            await ctx.nodes.set_consistency(run.names.node_admin(node), run.reads.admin_body())
        except (NodeCallError, ValidationError) as e:
            # A setting the node would refuse (bounded without a bound, which the CRD's
            # CEL rule forbids) fails here instead of at the node: the same error.
            errors.append(f"node {node}: {e}")
            continue
        reports[node] = run.reads
        run.notes.append(("ConsistencyApplied", f"node {node} now reads {run.reads.mode}"))
    return Switched(reports, errors)
