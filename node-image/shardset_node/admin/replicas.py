"""Admin actions on one shard's replicas: hosting or dropping a replica here, and the
membership changes and leadership transfers its leader makes."""

from __future__ import annotations

from typing import Any

from shardset_node.admin.shardmap import MapActions
from shardset_node.config import META_GROUP
from shardset_node.core import Node
from shardset_proto.admin import (
    AddLearner,
    CreateReplica,
    DropReplica,
    Promote,
    RemoveReplica,
    TransferLeader,
)
from shardset_proto.errors import ApiError
from shardset_raft import ConfChange, ConfChangeRejected, ConfChangeType, Role


class ReplicaActions:
    def __init__(self, node: Node, shard_map: MapActions) -> None:
        self.node = node
        self.shard_map = shard_map

    async def transfer_leader(self, body: TransferLeader) -> dict[str, Any]:
        shard, to = body.shard, body.to
        g = self.node.leader_group(shard, "transfer-leader")
        if g.raft.leader == to:
            return {"shard": shard, "leader": to, "changed": False}
        voters = g.raft.conf.voters
        if to not in voters:
            known = to in self.node.meta.map.nodes or to in g.raft.conf.learners
            raise ApiError(
                409 if known else 400,
                "not_a_voter" if known else "unknown_node",
                f"cannot transfer shard {shard}'s leadership to node {to}: "
                + ("it is not a voter" if known else "no such node in the store")
                + f" (voters: {', '.join(map(str, sorted(voters)))})",
                shard=shard,
                node=to,
            )
        await self.node.wait(g, g.transfer_leadership(to), "")
        return {"shard": shard, "leader": to, "changed": True}

    async def create(self, body: CreateReplica) -> dict[str, Any]:
        """Host a replica of a shard here: empty, to be added as a learner; or, with
        `voters`, one of the first replicas of a brand-new shard (a split)."""
        node = self.node
        shard = body.shard
        if shard in node.host.groups:
            return {"shard": shard, "node": node.id, "created": False}
        if shard == META_GROUP:
            # A node that lost its data hosts the metadata group again once it was
            # removed from it: it then joins as a learner (add-node).
            node.host_meta()
            return {"shard": shard, "node": node.id, "created": True}
        node.host_shard(shard, frozenset(body.voters or ()))
        return {"shard": shard, "node": node.id, "created": True}

    async def add_learner(self, body: AddLearner) -> dict[str, Any]:
        return await self._conf(body.shard, body.node, ConfChangeType.ADD_LEARNER, "add-learner")

    async def promote(self, body: Promote) -> dict[str, Any]:
        return await self._conf(body.shard, body.node, ConfChangeType.ADD_VOTER, "promote")

    async def remove(self, body: RemoveReplica) -> dict[str, Any]:
        shard, node = body.shard, body.node
        groups = self.node.host.groups
        if node == self.node.id and shard in groups and groups[shard].raft.role == Role.LEADER:
            raise ApiError(
                409,
                "is_leader",
                f"node {node} leads shard {shard}: transfer leadership first",
                shard=shard,
            )
        return await self._conf(shard, node, ConfChangeType.REMOVE, "remove-replica")

    async def _conf(
        self, shard: int, node: int, kind: ConfChangeType, action: str
    ) -> dict[str, Any]:
        g = self.node.leader_group(shard, action)
        try:
            outcome = await self.node.wait(g, g.conf_change(ConfChange(kind, node)), "")
        except ConfChangeRejected as e:
            raise ApiError(409, "conf_change_rejected", str(e), shard=shard) from None
        conf = g.raft.conf
        if shard != META_GROUP:  # the metadata group is not in the shard map
            await self.shard_map.keep_replicas(shard, tuple(sorted(conf.voters)))
        return {
            "shard": shard,
            "node": node,
            "changed": outcome is not None,
            "voters": sorted(conf.voters),
            "learners": sorted(conf.learners),
        }

    async def drop(self, body: DropReplica) -> dict[str, Any]:
        """Delete this node's replica of a shard it no longer belongs to."""
        node = self.node
        shard = body.shard
        g = node.host.groups.get(shard)
        if g is None:
            return {"shard": shard, "node": node.id, "dropped": False}
        # The shard map (committed in the metadata group) is the authority: a removed
        # replica's own log may never hear of its removal.
        holders = node.meta.map.replicas.get(shard, ())
        if node.id in holders:
            raise ApiError(
                409,
                "still_member",
                f"node {node.id} is still a member of shard {shard}; remove it first",
                shard=shard,
            )
        node.drop_shard(shard, g)
        return {"shard": shard, "node": node.id, "dropped": True}
