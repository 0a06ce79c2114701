"""The admin entry point: an action's name to the handler that runs it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from shardset_node.admin.body import Body
from shardset_node.admin.consistency import ConsistencyActions
from shardset_node.admin.recovery import Recovery
from shardset_node.admin.replicas import ReplicaActions
from shardset_node.admin.resharding import Resharding
from shardset_node.admin.shardmap import MapActions
from shardset_node.core import Node
from shardset_node.errors import ApiError
from shardset_node.peers.client import PeerClient
from shardset_node.reads import ReadPath

Handler = Callable[[Body], Awaitable[Body]]


class Admin:
    """Idempotent operations for the operator; each is safe to retry."""

    def __init__(self, node: Node, peers: PeerClient, reads: ReadPath) -> None:
        shard_map = MapActions(node, peers)
        replicas = ReplicaActions(node, shard_map)
        resharding = Resharding(node, peers)
        recovery = Recovery(node, peers, replicas)
        consistency = ConsistencyActions(node, reads)
        self._handlers: dict[str, Handler] = {
            "transfer-leader": replicas.transfer_leader,
            "create-replica": replicas.create,
            "add-learner": replicas.add_learner,
            "promote": replicas.promote,
            "remove-replica": replicas.remove,
            "drop-replica": replicas.drop,
            "record-replicas": shard_map.record_replicas,
            "split-shard": resharding.split,
            "system": resharding.system,
            "map-split": shard_map.map_split,
            "consistency": consistency.set_default,
            "add-node": shard_map.add_node,
            "recover-shard": recovery.recover,
            "map-recover": shard_map.map_recover,
            "remove-node": shard_map.remove_node,
            "read-index": consistency.read_index,
        }

    async def run(self, action: str, body: Body) -> Body:
        handler = self._handlers.get(action)
        if handler is None:
            raise ApiError(404, "unknown_action", f"unknown admin action {action!r}")
        return await handler(body)
