"""The recover-shard orchestration: a shard that lost its quorum for good is rebuilt,
lossily and on request, from the applied state of one surviving replica."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import structlog

from shardset_node.admin.replicas import ReplicaActions
from shardset_node.core import Node
from shardset_node.peers.client import PeerClient
from shardset_node.replication.group import ReplicaGroup
from shardset_node.replication.machines import ShardMachine
from shardset_proto.admin import (
    CreateReplica,
    DropReplica,
    MapRecover,
    ProposeSystem,
    RecoverShard,
    SystemCommand,
)
from shardset_proto.errors import ApiError

log = structlog.get_logger(__name__)


class Recovery:
    def __init__(self, node: Node, peers: PeerClient, replicas: ReplicaActions) -> None:
        self.node = node
        self.peers = peers
        self.replicas = replicas

    async def recover(self, body: RecoverShard) -> dict[str, Any]:
        """On a surviving replica of a shard that lost its quorum for good: rebuild the
        shard from this replica's applied state, as a new shard on `voters`.

        Explicit and lossy by design: entries a lost majority committed but this
        replica had not applied are gone. No Raft state is forced: a new group is made
        (as for a split), the survivor's keys are ingested into it, the shard map hands
        it the old shard's slots (new epoch), and the old group is dropped here, so a
        lost replica that comes back holds a shard no route leads to any more.
        """
        shard, new, voters = body.shard, body.new_shard, body.voters
        m = self.node.meta.map
        if new in m.replicas and not any(r.shard == shard for r in m.slots):
            await self._drop_local(shard)  # already recovered: finish the cleanup
            return {"shard": shard, "new_shard": new, "epoch": m.epoch, "changed": False}
        g = self._survivor(shard, new)
        applied = g.raft.applied
        await self._rebuild(g, new, voters)
        await self._drop_local(shard)
        log.warning(
            "shard recovered from this replica",
            shard=shard,
            new_shard=new,
            applied=applied,
            last_index=g.raft.log.last_index(),
        )
        return {
            "shard": shard,
            "new_shard": new,
            "survivor": self.node.id,
            "recovered_index": applied,
            "survivor_last_index": g.raft.log.last_index(),
            "epoch": self.node.meta.map.epoch,
            "changed": True,
        }

    def _survivor(self, shard: int, new: int) -> ReplicaGroup:
        """This node's replica of `shard`, if recovering from it is allowed."""
        g = self.node.host.groups.get(shard)
        if g is None or not isinstance(g.machine, ShardMachine):
            raise ApiError(
                404, "no_replica", f"node {self.node.id} holds no replica of shard {shard}"
            )
        if g.raft.leader != 0:
            raise ApiError(
                409,
                "has_leader",
                f"shard {shard} has a leader (node {g.raft.leader}): nothing to recover",
            )
        if new in self.node.meta.map.replicas:
            raise ApiError(409, "shard_exists", f"shard {new} already exists")
        return g

    async def _rebuild(self, g: ReplicaGroup, new: int, voters: list[int]) -> None:
        """Shard `new` on `voters`, holding this replica's keys, takes over g's slots."""
        machine = g.machine
        assert isinstance(machine, ShardMachine)
        ranges = [(r.start, r.end) for r in self.node.meta.map.slots if r.shard == g.id]
        for node in voters:
            await self.peers.call(node, CreateReplica(shard=new, voters=voters))
        for start, end in ranges:
            data = base64.b64encode(machine.export_slots(start, end)).decode()
            cmd = SystemCommand(op="ingest", start=start, end=end, data=data)
            await self.peers.call_leader(new, voters, ProposeSystem(shard=new, command=cmd))
        await self.peers.call_meta(MapRecover(shard=g.id, new_shard=new, voters=voters))

    async def _drop_local(self, shard: int) -> None:
        for _ in range(50):  # until this node's map shows the shard gone
            if shard not in self.node.meta.map.replicas:
                await self.replicas.drop(DropReplica(shard=shard))
                return
            await asyncio.sleep(0.1)
