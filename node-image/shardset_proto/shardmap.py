"""The shard map: which shard owns a slot, which nodes hold a shard, where nodes are.

Kept in the metadata Raft group, so the store describes itself. Every change
bumps `epoch`; clients cache the map and a node refuses a request routed with
an older epoch to a shard that no longer owns the key.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from dataclasses import dataclass, field, replace

from shardset_proto.placement import SlotRange, initial_replicas, initial_slots
from shardset_proto.slots import SLOTS


@dataclass(frozen=True, slots=True)
class NodeAddress:
    peer: str  # host:port of the Raft transport
    api: str  # http(s)://host:port of the client API
    # With TLS (issue 16) admin actions and the binary client protocol have ports of
    # their own: https://host:port of the admin API (only the operator and the store's
    # nodes may call it) and host:port of the wire protocol. Empty: served where they
    # were before (admin on `api`, wire on `peer`), as an insecure node does.
    admin: str = ""
    wire: str = ""

    @property
    def admin_url(self) -> str:
        return self.admin or self.api

    @property
    def wire_addr(self) -> str:
        return self.wire or self.peer

    def encode(self) -> list[str]:
        # Two fields unless the node has separate ports, so maps written before
        # issue 16 and insecure stores read and write the same bytes as before.
        if self.admin or self.wire:
            return [self.peer, self.api, self.admin, self.wire]
        return [self.peer, self.api]

    @staticmethod
    def decode(raw: list[str]) -> NodeAddress:
        if len(raw) not in (2, 4):
            raise ValueError(f"a node address has 2 or 4 fields, not {len(raw)}")
        return NodeAddress(*(str(f) for f in raw))


@dataclass(frozen=True)
class ShardMap:
    epoch: int
    slots: tuple[SlotRange, ...]
    replicas: dict[int, tuple[int, ...]]
    nodes: dict[int, NodeAddress] = field(default_factory=dict)

    def __post_init__(self) -> None:
        covered = sorted((r.start, r.end) for r in self.slots)
        expected = 0
        for start, end in covered:
            if start != expected or end <= start:
                raise ValueError(f"slot ranges must tile [0, {SLOTS}) without gaps: {covered}")
            expected = end
        if expected != SLOTS:
            raise ValueError(f"slot ranges end at {expected}, not {SLOTS}")
        unknown = {r.shard for r in self.slots} - set(self.replicas)
        if unknown:
            raise ValueError(f"slots point at shards without replicas: {sorted(unknown)}")

    def shard_of_slot(self, slot: int) -> int:
        ranges = sorted(self.slots, key=lambda r: r.start)
        i = bisect_right([r.start for r in ranges], slot) - 1
        return ranges[i].shard

    def shards_on(self, node: int) -> list[int]:
        return sorted(s for s, holders in self.replicas.items() if node in holders)

    def with_changes(self, **changes: object) -> ShardMap:
        """A new map with `changes` and the next epoch."""
        return replace(self, epoch=self.epoch + 1, **changes)  # type: ignore[arg-type]

    def encode(self) -> bytes:
        return json.dumps(
            {
                "epoch": self.epoch,
                "slots": [[r.start, r.end, r.shard] for r in self.slots],
                "replicas": {str(s): list(h) for s, h in self.replicas.items()},
                "nodes": {str(n): a.encode() for n, a in self.nodes.items()},
            },
            sort_keys=True,
        ).encode()

    @staticmethod
    def decode(data: bytes) -> ShardMap:
        raw = json.loads(data)
        return ShardMap(
            epoch=int(raw["epoch"]),
            slots=tuple(SlotRange(int(a), int(b), int(s)) for a, b, s in raw["slots"]),
            replicas={int(s): tuple(int(n) for n in h) for s, h in raw["replicas"].items()},
            nodes={int(n): NodeAddress.decode(a) for n, a in raw["nodes"].items()},
        )


def split_range(
    slots: tuple[SlotRange, ...], shard: int, new: int, start: int, end: int
) -> tuple[SlotRange, ...]:
    """The slot ranges after [start, end) of `shard` moves to shard `new`."""
    out: list[SlotRange] = []
    for r in slots:
        if r.shard != shard or end <= r.start or start >= r.end:
            out.append(r)
            continue
        if not (r.start <= start and end <= r.end):
            raise ValueError(f"[{start}, {end}) crosses the edge of {r}")
        pieces = [(r.start, start, shard), (start, end, new), (end, r.end, shard)]
        out.extend(SlotRange(a, b, s) for a, b, s in pieces if a < b)
    return tuple(sorted(out, key=lambda r: r.start))


def bootstrap_map(nodes: dict[int, NodeAddress], shards: int, replication: int) -> ShardMap:
    """The first shard map of a new store (epoch 1)."""
    slots = initial_slots(shards)
    replicas = initial_replicas([r.shard for r in slots], list(nodes), replication)
    return ShardMap(epoch=1, slots=slots, replicas=replicas, nodes=dict(nodes))
