"""The store's shape and which changes to it are refused.

Node count changes are carried out (members.py, operation.py), and so is a growing
shard count (splits.py; a CEL rule refuses a shrinking one). The replication factor
of a running store cannot change yet: such a change is refused in the Progressing
condition and nothing is touched, so it is visible and nothing half-happens.
"""

from __future__ import annotations

from dataclasses import dataclass

from shardset_operator.api.models import ShardSetSpec
from shardset_operator.api.refusal import Refusal
from shardset_proto.shardmap import ShardMap


@dataclass(frozen=True)
class Shape:
    replicas: int  # StatefulSet replicas to apply
    replication: int  # replicas per shard the store really has (the PDB and health use it)
    refusals: tuple[Refusal, ...] = ()
    tls: bool = False  # the store's nodes use TLS (its shard map holds https addresses)


def plan_shape(spec: ShardSetSpec, recorded: ShardMap | None) -> Shape:
    """`recorded` is the bootstrap map in the ConfigMap, None for a new store.

    `replicas` here is the size for a new store; a running store's StatefulSet size
    comes from its membership (plan/members.py)."""
    wants_tls = spec.tls.mode != "Disabled"
    if recorded is None:
        return Shape(replicas=spec.nodes, replication=spec.replication_factor, tls=wants_tls)
    replication = max((len(h) for h in recorded.replicas.values()), default=0)
    refusals = []
    # The shard map every node and client reads fixed http or https at creation: a store
    # created before spec.tls existed (whose spec now reads the default) stays as it was.
    has_tls = any(a.api.startswith("https://") for a in recorded.nodes.values())
    if has_tls != wants_tls:
        refusals.append(
            Refusal(
                "TlsModeChangeNotSupported",
                f"spec.tls.mode is {spec.tls.mode} but the store was created "
                f"{'with' if has_tls else 'without'} TLS (its shard map holds "
                f"{'https' if has_tls else 'http'} addresses) and keeps running so; "
                "create a new ShardSet to change it",
            )
        )
    if spec.replication_factor != replication:
        refusals.append(
            Refusal(
                "ReplicationChangeNotSupported",
                f"spec.replicationFactor is {spec.replication_factor} but the store was "
                f"created with {replication}; this operator version cannot change it "
                f"(set it back to {replication})",
            )
        )
    return Shape(
        replicas=spec.nodes, replication=replication, refusals=tuple(refusals), tls=has_tls
    )
