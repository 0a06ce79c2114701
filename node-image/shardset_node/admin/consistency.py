"""Admin actions about reads: the node's default consistency, changed live, and the
read index a follower asks the leader for to prove how stale it is."""

from __future__ import annotations

import structlog

from shardset_node.admin.body import Body, int_field
from shardset_node.consistency import policy_from_body
from shardset_node.core import Node
from shardset_node.reads import ReadPath

log = structlog.get_logger(__name__)


class ConsistencyActions:
    def __init__(self, node: Node, reads: ReadPath) -> None:
        self.node = node
        self.reads = reads

    async def set_default(self, body: Body) -> Body:
        """Change the default read consistency of this node, live."""
        policy = policy_from_body(body)
        old, self.reads.policy = self.reads.policy, policy
        log.info("read consistency changed", node=self.node.id, old=old.view(), new=policy.view())
        return policy.view()

    async def read_index(self, body: Body) -> Body:
        """On a shard's leader: a linearizable read index (a heartbeat round, never the
        lease), which a follower uses to prove how stale it is (bounded reads)."""
        shard = int_field(body, "shard")
        g = self.node.leader_group(shard, "read-index")
        index = await self.node.wait(g, g.read_index(use_lease=False), "")
        return {"shard": shard, "index": int(index), "leader": self.node.id}
