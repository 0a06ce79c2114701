"""The admin entry point: an action's name to its typed body and the handler that runs
it. A name that is no AdminAction is a 404; a body that does not validate a 400 naming
the field."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from shardset_node.admin.checks import CheckActions
from shardset_node.admin.consistency import ConsistencyActions
from shardset_node.admin.recovery import Recovery
from shardset_node.admin.replicas import ReplicaActions
from shardset_node.admin.resharding import Resharding
from shardset_node.admin.shardmap import MapActions
from shardset_node.admin.users import UserActions
from shardset_node.checker import ConsistencyChecker
from shardset_node.core import Node
from shardset_node.peers.client import PeerClient
from shardset_node.reads import ReadPath
from shardset_proto import admin as a
from shardset_proto.admin import AdminAction, AdminBody, BadBody
from shardset_proto.errors import ApiError

B = TypeVar("B", bound=AdminBody)


class _Route(Generic[B]):
    """One action: its body model and the handler that takes it (mypy checks the pair)."""

    def __init__(self, body: type[B], handler: Callable[[B], Awaitable[dict[str, Any]]]) -> None:
        self.body = body
        self.handler = handler

    async def parsed(self, raw: object) -> dict[str, Any]:
        try:
            body = self.body.parse(raw)
        except BadBody as e:
            code = "missing_field" if e.missing else "bad_field"
            raise ApiError(400, code, str(e), field=e.field) from None
        return await self.handler(body)

    async def typed(self, body: AdminBody) -> dict[str, Any]:
        assert isinstance(body, self.body), f"{type(body).__name__} is no {self.body.__name__}"
        return await self.handler(body)


class Admin:
    """Idempotent operations for the operator; each is safe to retry."""

    def __init__(
        self, node: Node, peers: PeerClient, reads: ReadPath, checker: ConsistencyChecker
    ) -> None:
        shard_map = MapActions(node, peers)
        replicas = ReplicaActions(node, shard_map)
        resharding = Resharding(node, peers)
        recovery = Recovery(node, peers, replicas)
        consistency = ConsistencyActions(node, reads)
        checks = CheckActions(node, checker)
        users = UserActions(node)
        routes: list[_Route[Any]] = [
            _Route(a.TransferLeader, replicas.transfer_leader),
            _Route(a.CreateReplica, replicas.create),
            _Route(a.AddLearner, replicas.add_learner),
            _Route(a.Promote, replicas.promote),
            _Route(a.RemoveReplica, replicas.remove),
            _Route(a.DropReplica, replicas.drop),
            _Route(a.RecordReplicas, shard_map.record_replicas),
            _Route(a.SplitShard, resharding.split),
            _Route(a.ProposeSystem, resharding.system),
            _Route(a.MapSplit, shard_map.map_split),
            _Route(a.SetConsistency, consistency.set_default),
            _Route(a.AddNode, shard_map.add_node),
            _Route(a.RecoverShard, recovery.recover),
            _Route(a.MapRecover, shard_map.map_recover),
            _Route(a.RemoveNode, shard_map.remove_node),
            _Route(a.ReadIndex, consistency.read_index),
            _Route(a.CheckConsistency, checks.check),
            _Route(a.ReplicaDigest, checks.digest),
            _Route(a.ShardState, checks.shard_state),
            _Route(a.RebuildReplica, checks.rebuild),
            _Route(a.PutUser, users.put),
            _Route(a.DeleteUser, users.delete),
        ]
        self._routes = {r.body.action: r for r in routes}
        assert set(self._routes) == set(AdminAction), "an admin action has no handler"

    async def run(self, action: str, raw: object) -> dict[str, Any]:
        """Run the action named `action` (a URL segment) on its JSON body."""
        try:
            known = AdminAction(action)
        except ValueError:
            raise ApiError(404, "unknown_action", f"unknown admin action {action!r}") from None
        return await self._routes[known].parsed(raw)

    async def call(self, body: AdminBody) -> dict[str, Any]:
        """Run an action this node addressed to itself (a split, a recovery)."""
        return await self._routes[body.action].typed(body)
