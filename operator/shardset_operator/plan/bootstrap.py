"""The store's first shard map, computed with the placement code nodes use (shardset_proto).

Written once into the ConfigMap (key bootstrap.json, builders/configmap.py) and never
changed: after the first start the map lives in the store's metadata group, and a node
that restarts must see the same bootstrap file it was created with.
"""

from __future__ import annotations

from shardset_operator.api.models import ShardSetSpec
from shardset_operator.api.naming import Names
from shardset_proto.shardmap import ShardMap, bootstrap_map


def first_map(names: Names, spec: ShardSetSpec) -> ShardMap:
    # With TLS the map holds https API URLs and the admin and wire ports (the node
    # addresses every node and client reads); written once, so spec.tls.mode is immutable.
    nodes = {i: names.node_address(i) for i in range(1, spec.nodes + 1)}
    return bootstrap_map(nodes, spec.shards, spec.replication_factor)


def bootstrap_document(names: Names, spec: ShardSetSpec, existing: str | None) -> str:
    """The bootstrap.json to keep: the existing one if there is one, else a new one."""
    if existing:
        return existing
    return first_map(names, spec).encode().decode()


def recorded_map(document: str | None) -> ShardMap | None:
    """The bootstrap map as written, None before it was (or if it cannot be read)."""
    if not document:
        return None
    return ShardMap.decode(document.encode())
