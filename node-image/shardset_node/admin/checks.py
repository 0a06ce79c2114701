"""Admin actions of the consistency checker and of rebuilding corrupt replicas
(issue 15): check-consistency, replica-digest, shard-state, rebuild-replica."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from shardset_node.checker import ConsistencyChecker
from shardset_node.core import Node
from shardset_node.replication.group import ReplicaGroup
from shardset_node.replication.machines import ShardMachine
from shardset_node.storage.kvengine import ReplicaCorrupt
from shardset_proto.admin import CheckConsistency, RebuildReplica, ReplicaDigest, ShardState
from shardset_proto.errors import ApiError


class CheckActions:
    def __init__(self, node: Node, checker: ConsistencyChecker) -> None:
        self.node = node
        self.checker = checker

    async def check(self, body: CheckConsistency) -> dict[str, Any]:
        view = await self.checker.check(body.shard)
        return {"shard": body.shard, **view.to_json()}

    async def digest(self, body: ReplicaDigest) -> dict[str, Any]:
        """This replica's digest at check entry `index`, once it has applied it."""
        shard, index = body.shard, body.index
        g, machine = self._replica(shard, "replica-digest")
        self._refuse_corrupt(shard)
        if g.raft.applied < index:
            await self.node.wait(g, g.wait_applied(index), "")
        found = machine.checks.get(index)
        if found is None:
            raise ApiError(
                404,
                "no_such_check",
                f"node {self.node.id} holds no digest of shard {shard} at index {index} "
                "(not a check entry, too old, or installed from a snapshot past it)",
                shard=shard,
            )
        digest, keys = await asyncio.wrap_future(found)  # ReplicaCorrupt if a row fails
        return {"shard": shard, "index": index, "replica": self.node.id,
                "digest": digest, "keys": keys}  # fmt: skip

    async def shard_state(self, body: ShardState) -> dict[str, Any]:
        """On the leader: the shard's whole state at an index >= `min_index`, every row
        checked on the way out (a corrupt leader answers 503 replica_corrupt)."""
        shard = body.shard
        g = self.node.leader_group(shard, "shard-state")
        machine = g.machine
        if not isinstance(machine, ShardMachine):
            raise ApiError(400, "not_a_shard", f"group {shard} holds no key-value state")
        self._refuse_corrupt(shard)
        if g.raft.applied < body.min_index:
            await self.node.wait(g, g.wait_applied(body.min_index), "")
        index, data = await asyncio.to_thread(machine.export_state)
        return {"shard": shard, "index": index, "data": base64.b64encode(data).decode()}

    async def rebuild(self, body: RebuildReplica) -> dict[str, Any]:
        """Mark this replica corrupt; the node's Rebuilder rebuilds it from the leader."""
        self._replica(body.shard, "rebuild-replica")
        self.node.engine.mark_corrupt(body.shard, body.reason)
        return {"shard": body.shard, "node": self.node.id, "rebuilding": True}

    def _replica(self, shard: int, action: str) -> tuple[ReplicaGroup, ShardMachine]:
        g = self.node.host.groups.get(shard)
        if g is None or not isinstance(g.machine, ShardMachine):
            raise ApiError(
                404,
                "no_such_replica",
                f"node {self.node.id} holds no replica of shard {shard} ({action})",
                shard=shard,
            )
        return g, g.machine

    def _refuse_corrupt(self, shard: int) -> None:
        reason = self.node.engine.corrupt.get(shard)
        if reason is not None:
            raise ReplicaCorrupt(shard, reason)
