"""The store's shape (nodes, shards, replication) and which changes to it are refused.

This operator version creates a store but does not yet move replicas: adding nodes
would start pods the store's shard map does not know (they would refuse to start),
and removing nodes would drop replicas without a membership change. Such changes are
refused in the Progressing condition and the StatefulSet keeps the recorded size, so
the change is visible and nothing half-happens. Scaling slots in here later.
"""

from __future__ import annotations

from dataclasses import dataclass

from shardset_node.shardmap import ShardMap
from shardset_operator.models import ShardSetSpec


@dataclass(frozen=True)
class Refusal:
    reason: str  # CamelCase, for the condition
    message: str


@dataclass(frozen=True)
class Shape:
    replicas: int  # StatefulSet replicas to apply
    replication: int  # replicas per shard the store really has (the PDB and health use it)
    refusals: tuple[Refusal, ...] = ()


def plan_shape(spec: ShardSetSpec, recorded: ShardMap | None) -> Shape:
    """`recorded` is the bootstrap map in the ConfigMap, None for a new store."""
    if recorded is None:
        return Shape(replicas=spec.nodes, replication=spec.replication_factor)
    nodes = len(recorded.nodes)
    replication = max((len(h) for h in recorded.replicas.values()), default=0)
    refusals = []
    if spec.nodes != nodes:
        refusals.append(
            Refusal(
                "ScaleNotSupported",
                f"spec.nodes is {spec.nodes} but the store was created with {nodes} nodes; "
                "this operator version cannot add or remove nodes of a running store, so it "
                f"keeps {nodes} (set spec.nodes back to {nodes})",
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
    shards = len(recorded.replicas)
    if spec.shards != shards:
        refusals.append(
            Refusal(
                "ShardCountChangeNotSupported",
                f"spec.shards is {spec.shards} but the store was created with {shards}",
            )
        )
    return Shape(replicas=nodes, replication=replication, refusals=tuple(refusals))
