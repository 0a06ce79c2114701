"""Admin actions that move slots between shards online: the split orchestration, run on
the leader of the shard that gives the slots, and the slot-move commands it proposes."""

from __future__ import annotations

import base64
from typing import Any

from shardset_node.core import Node
from shardset_node.peers.client import PeerClient
from shardset_node.replication.group import ReplicaGroup
from shardset_node.replication.machines import ShardMachine, system_command
from shardset_proto.admin import CreateReplica, MapSplit, ProposeSystem, SplitShard, SystemCommand
from shardset_proto.errors import ApiError


class Resharding:
    def __init__(self, node: Node, peers: PeerClient) -> None:
        self.node = node
        self.peers = peers

    async def split(self, body: SplitShard) -> dict[str, Any]:
        """Move slots [start, end) of `shard` to a new shard `new_shard`, online.

        Resumable: every step checks whether it is already done. Writes to the
        moving slots get a retryable 503 between the freeze and the map update.
        """
        shard, new, start, end = body.shard, body.new_shard, body.start, body.end
        g = self.node.leader_group(shard, "split-shard")
        m = self.node.meta.map
        owned = [r for r in m.slots if r.shard == shard]
        already = all(m.shard_of_slot(x) == new for x in (start, end - 1))
        if not already and not any(r.start <= start < end <= r.end for r in owned):
            raise ApiError(409, "not_owned", f"slots [{start}, {end}) are not all in shard {shard}")
        if not already and new in m.replicas:
            raise ApiError(409, "shard_exists", f"shard {new} already exists")
        voters = body.replicas if body.replicas is not None else sorted(g.raft.conf.voters)
        if not already:
            await self._move(g, new, start, end, voters)
        result = await self.node.propose(g, system_command("drop", start, end))
        return {
            "shard": shard,
            "new_shard": new,
            "slots": [start, end],
            "epoch": self.node.meta.map.epoch,
            **(result if isinstance(result, dict) else {}),
        }

    async def _move(
        self, g: ReplicaGroup, new: int, start: int, end: int, voters: list[int]
    ) -> None:
        """Create shard `new` on `voters`, freeze the slots here, copy them over and
        hand them to `new` in the shard map."""
        for node in voters:
            await self.peers.call(node, CreateReplica(shard=new, voters=voters))
        await self.node.propose(g, system_command("freeze", start, end, to=new))
        machine = g.machine
        assert isinstance(machine, ShardMachine)
        data = base64.b64encode(machine.export_slots(start, end)).decode()
        ingest = SystemCommand(op="ingest", start=start, end=end, data=data)
        await self.peers.call_leader(new, voters, ProposeSystem(shard=new, command=ingest))
        await self.peers.call_meta(
            MapSplit(shard=g.id, new_shard=new, start=start, end=end, voters=voters)
        )

    async def system(self, body: ProposeSystem) -> dict[str, Any]:
        """Propose a slot-move command on a shard this node leads."""
        cmd = body.command
        g = self.node.leader_group(body.shard, "system")
        fields = {k: v for k, v in (("to", cmd.to), ("data", cmd.data)) if v is not None}
        data = system_command(cmd.op, cmd.start, cmd.end, **fields)
        result = await self.node.propose(g, data)
        return {"shard": body.shard, "result": result}
