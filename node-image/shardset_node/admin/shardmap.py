"""Admin actions that change the shard map, run on the metadata group's leader: a
shard's replicas, a node joining or leaving the store, the map half of a split and of
a recovery. Each is a compare-and-set on the map's epoch, so each is idempotent."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shardset_node.config import META_GROUP, REQUEST_TIMEOUT
from shardset_node.core import Node
from shardset_node.peers.client import PeerClient
from shardset_node.replication.group import ReplicaGroup
from shardset_node.replication.machines import MetaMachine
from shardset_proto.admin import AddNode, MapRecover, MapSplit, RecordReplicas, RemoveNode
from shardset_proto.errors import ApiError
from shardset_proto.placement import SlotRange
from shardset_proto.shardmap import NodeAddress, ShardMap, split_range
from shardset_raft import ConfChange, ConfChangeRejected, ConfChangeType, Role

MapChange = Callable[[ShardMap], ShardMap | None]


class MapActions:
    def __init__(self, node: Node, peers: PeerClient) -> None:
        self.node = node
        self.peers = peers

    async def record_replicas(self, body: RecordReplicas) -> dict[str, Any]:
        """On the metadata leader: set a shard's replicas in the map (CAS on epoch)."""
        shard, voters = body.shard, tuple(body.voters)
        meta = self.node.leader_group(META_GROUP, "record-replicas")

        def change(m: ShardMap) -> ShardMap | None:
            if m.replicas.get(shard) == voters:
                return None
            return m.with_changes(replicas={**m.replicas, shard: voters})

        return {"shard": shard, **await self.change_map(meta, change)}

    async def keep_replicas(self, shard: int, voters: tuple[int, ...]) -> None:
        """Keep the shard map's replica list equal to the group's voters.

        The map lives in the metadata group, so the change goes to its leader,
        which applies it as a compare-and-set on the epoch.
        """
        meta = self.node.host.groups[META_GROUP]
        record = RecordReplicas(shard=shard, voters=list(voters))
        if meta.raft.role == Role.LEADER:
            await self.record_replicas(record)
            return
        leader = meta.raft.leader
        if leader == 0 or leader not in self.node.meta.map.nodes:
            raise ApiError(
                503, "no_meta_leader", "the metadata group has no leader; retry", retry_after=1
            )
        try:
            await self.peers.call(leader, record, timeout=REQUEST_TIMEOUT)
        except ApiError as e:
            raise ApiError(
                503,
                "meta_update_failed",
                f"shard map update at node {leader} answered {e.status}; retry",
                retry_after=1,
            ) from e

    async def add_node(self, body: AddNode) -> dict[str, Any]:
        """On the metadata leader: make a new node a member of the store.

        Its addresses go into the shard map (every node then connects to it) and it
        becomes a learner of the metadata group, so it learns the map. It hosts no
        replica until replicas are moved to it."""
        node = body.node
        addr = NodeAddress(body.peer, body.api, body.admin or "", body.wire or "")
        meta = self.node.leader_group(META_GROUP, "add-node")

        def change(m: ShardMap) -> ShardMap | None:
            known = m.nodes.get(node)
            if known == addr:
                return None
            if known is not None:
                raise ApiError(
                    409, "node_exists", f"node {node} is already a member, at {known.peer}"
                )
            return m.with_changes(nodes={**m.nodes, node: addr})

        result = await self.change_map(meta, change)
        if node not in meta.raft.conf.members():
            await self._meta_conf(meta, ConfChange(ConfChangeType.ADD_LEARNER, node))
        return {"node": node, **result, **_meta_members(meta)}

    async def remove_node(self, body: RemoveNode) -> dict[str, Any]:
        """On the metadata leader: remove a node that holds no replica any more."""
        node = body.node
        meta = self.node.leader_group(META_GROUP, "remove-node")
        held = self.node.meta.map.shards_on(node)
        if held:
            raise ApiError(
                409,
                "still_holds_replicas",
                f"node {node} still holds replicas of shards {held}: move them first",
            )
        if node == self.node.id:
            raise ApiError(
                409, "is_leader", f"node {node} leads the metadata group: transfer it first"
            )
        if node in meta.raft.conf.members():
            await self._meta_conf(meta, ConfChange(ConfChangeType.REMOVE, node))

        def change(m: ShardMap) -> ShardMap | None:
            if node not in m.nodes:
                return None
            return m.with_changes(nodes={n: a for n, a in m.nodes.items() if n != node})

        result = await self.change_map(meta, change)
        return {"node": node, **result, **_meta_members(meta)}

    async def map_split(self, body: MapSplit) -> dict[str, Any]:
        """On the metadata leader: give slots [start, end) of `shard` to `new_shard`."""
        shard, new, start, end = body.shard, body.new_shard, body.start, body.end
        voters = tuple(body.voters)
        meta = self.node.leader_group(META_GROUP, "map-split")

        def change(m: ShardMap) -> ShardMap | None:
            if m.shard_of_slot(start) == new:
                return None
            slots = split_range(m.slots, shard, new, start, end)
            return m.with_changes(slots=slots, replicas={**m.replicas, new: voters})

        return await self.change_map(meta, change)

    async def map_recover(self, body: MapRecover) -> dict[str, Any]:
        """On the metadata leader: the slots of `shard` go to `new_shard`; `shard` leaves
        the map."""
        shard, new, voters = body.shard, body.new_shard, tuple(body.voters)
        meta = self.node.leader_group(META_GROUP, "map-recover")

        def change(m: ShardMap) -> ShardMap | None:
            if shard not in m.replicas:
                return None
            slots = tuple(
                SlotRange(r.start, r.end, new if r.shard == shard else r.shard) for r in m.slots
            )
            replicas = {s: h for s, h in m.replicas.items() if s != shard} | {new: voters}
            return m.with_changes(slots=slots, replicas=replicas)

        return await self.change_map(meta, change)

    async def change_map(self, meta: ReplicaGroup, change: MapChange) -> dict[str, Any]:
        """Apply `change` to the shard map as a compare-and-set on its epoch, retrying
        when another change won the race; `change` returns None once it is in force."""
        for _ in range(10):
            current = self.node.meta.map
            new = change(current)
            if new is None:
                return {"epoch": current.epoch, "changed": False}
            result = await self.node.propose(meta, MetaMachine.change(current, new))
            if isinstance(result, dict) and result.get("ok"):
                return {"epoch": new.epoch, "changed": True}
        raise ApiError(503, "meta_conflict", "the shard map kept changing; retry", retry_after=1)

    async def _meta_conf(self, meta: ReplicaGroup, change: ConfChange) -> None:
        try:
            await self.node.wait(meta, meta.conf_change(change), "")
        except ConfChangeRejected as e:
            raise ApiError(409, "conf_change_rejected", str(e), shard=META_GROUP) from None


def _meta_members(meta: ReplicaGroup) -> dict[str, Any]:
    conf = meta.raft.conf
    return {"meta_voters": sorted(conf.voters), "meta_learners": sorted(conf.learners)}
