"""A node's configuration, and the constants every layer of the node agrees on."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from shardset_node.consistency import ReadPolicy
from shardset_proto.shardmap import ShardMap

META_GROUP = 0  # the metadata group: it replicates the shard map
META_VOTERS = 5  # voters of the metadata group at bootstrap; other nodes are learners
REQUEST_TIMEOUT = 5.0  # seconds a request waits for its group (twice that for a peer call)


@dataclass(frozen=True)
class NodeConfig:
    node_id: int
    data_dir: Path
    peer_host: str
    peer_port: int
    bootstrap: ShardMap
    tick_interval: float = 0.05
    election_tick: int = 10
    fsync: bool = True
    read_policy: ReadPolicy = field(default_factory=ReadPolicy)  # for reads naming no mode
    compact_every: int = 10_000  # applied entries between snapshots of a group
    # Test hook: reach peer N at another address (a fault-injecting proxy).
    peer_overrides: tuple[tuple[int, str], ...] = ()
    # The store existed before this node's data directory did (its volume was lost):
    # the node must not bootstrap its groups from the bootstrap map, whose membership
    # would make an empty log a voter, and waits to be re-added instead.
    store_created: bool = False
    # Seconds between consistency checks of each shard this node leads (0: only on
    # request, POST /v1/admin/check-consistency). Issue 15.
    check_interval: float = 600.0
    # Below this many free bytes on the data file system the node refuses client writes
    # (507) and hands its leaderships off, before the disk is actually full (core.py).
    min_free_bytes: int = 64 << 20
