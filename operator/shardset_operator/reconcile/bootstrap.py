"""Phase 1: the bootstrap map, kept once written, and the store's shape, which follows it."""

from __future__ import annotations

from dataclasses import dataclass

from shardset_operator.builders.configmap import BOOTSTRAP_KEY
from shardset_operator.clients.kube import KubeError
from shardset_operator.plan.bootstrap import bootstrap_document, recorded_map
from shardset_operator.plan.shape import Shape, plan_shape
from shardset_operator.reconcile.context import Context, PhaseFailed, Run
from shardset_proto.shardmap import ShardMap


@dataclass(frozen=True)
class Bootstrap:
    written: str | None  # bootstrap.json as the ConfigMap holds it; None: not written yet
    recorded: ShardMap | None  # the same, decoded
    document: str  # the bootstrap.json to apply
    shape: Shape
    known: list[int]  # the members last seen (status), else the bootstrap map's nodes
    consistency_changed: bool  # the ConfigMap holds another read setting than the spec


async def read_bootstrap(ctx: Context, run: Run) -> Bootstrap:
    """Raises PhaseFailed when the ConfigMap cannot be read, or holds a map that
    cannot be: nothing can be planned without the store's identity."""
    names, spec = run.names, run.sset.spec
    try:
        existing = await ctx.kube.configmap_data(names.namespace, names.configmap)
    except KubeError as e:
        raise PhaseFailed(str(e)) from e
    written = (existing or {}).get(BOOTSTRAP_KEY)
    try:
        recorded = recorded_map(written)
    except (ValueError, KeyError, TypeError) as e:
        raise PhaseFailed(
            f"ConfigMap {names.configmap} holds an unreadable {BOOTSTRAP_KEY} ({e}); "
            "it is the store's identity and is never rewritten: restore it"
        ) from e
    shape = plan_shape(spec, recorded)
    if written is None:
        run.notes.append(
            (
                "BootstrapMapWritten",
                f"first shard map of {spec.shards} shards "
                f"on {shape.replicas} nodes, replication {spec.replication_factor}",
            )
        )
    consistency_changed = existing is not None and any(
        existing.get(k) != v for k, v in run.reads.configmap_data().items()
    )
    return Bootstrap(
        written=written,
        recorded=recorded,
        document=bootstrap_document(names, spec, written),
        shape=shape,
        known=run.sset.status.members or (sorted(recorded.nodes) if recorded else []),
        consistency_changed=consistency_changed,
    )
