"""Phase 2: observe the store before applying anything (the StatefulSet's size follows
the store's membership)."""

from __future__ import annotations

from shardset_operator.api.observed import Seen
from shardset_operator.clients.kube import KubeError
from shardset_operator.clients.observe import observe
from shardset_operator.reconcile.bootstrap import Bootstrap
from shardset_operator.reconcile.context import Context, PhaseFailed, Run


async def observe_store(ctx: Context, run: Run, boot: Bootstrap) -> Seen:
    """Every node the spec or the known members name, at least the StatefulSet's pods.
    Raises PhaseFailed when the API server cannot be read (nodes that do not answer
    are part of the observation)."""
    count = max(run.sset.spec.nodes, max(boot.known, default=0))
    try:
        return await observe(ctx.kube, ctx.nodes, run.names, count)
    except KubeError as e:
        raise PhaseFailed(str(e)) from e
