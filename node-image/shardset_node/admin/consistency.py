"""Admin actions about reads: the node's default consistency, changed live, and the
read index a follower asks the leader for to prove how stale it is."""

from __future__ import annotations

from typing import Any

import structlog

from shardset_node.consistency import ReadPolicy
from shardset_node.core import Node
from shardset_node.reads import ReadPath
from shardset_proto.admin import ReadIndex, SetConsistency

log = structlog.get_logger(__name__)


class ConsistencyActions:
    def __init__(self, node: Node, reads: ReadPath) -> None:
        self.node = node
        self.reads = reads

    async def set_default(self, body: SetConsistency) -> dict[str, Any]:
        """Change the default read consistency of this node, live."""
        policy = ReadPolicy(body.mode, body.max_staleness_ms)
        old, self.reads.policy = self.reads.policy, policy
        log.info("read consistency changed", node=self.node.id, old=old.view(), new=policy.view())
        return policy.view()

    async def read_index(self, body: ReadIndex) -> dict[str, Any]:
        """On a shard's leader: a linearizable read index (a heartbeat round, never the
        lease), which a follower uses to prove how stale it is (bounded reads)."""
        g = self.node.leader_group(body.shard, "read-index")
        index = await self.node.wait(g, g.read_index(use_lease=False), "")
        return {"shard": body.shard, "index": int(index), "leader": self.node.id}
