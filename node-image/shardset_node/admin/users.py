"""Admin actions on the store's users (issue 16), run on the metadata group's leader: a
user put (created or replaced) or deleted in the table the metadata group replicates.
Both are idempotent; every node checks requests against the table once it has applied
the change, so a deleted user's token and certificate stop working store-wide within
the time the change takes to reach the other nodes (a heartbeat or two)."""

from __future__ import annotations

from typing import Any

import structlog

from shardset_node.config import META_GROUP
from shardset_node.core import Node
from shardset_node.replication.machines import MetaMachine
from shardset_proto.admin import DeleteUser, PutUser
from shardset_proto.errors import ApiError
from shardset_proto.users import User

log = structlog.get_logger(__name__)


class UserActions:
    def __init__(self, node: Node) -> None:
        self.node = node

    async def put(self, body: PutUser) -> dict[str, Any]:
        """On the metadata leader: create or replace user `name`."""
        meta = self.node.leader_group(META_GROUP, "put-user")
        user = User(body.name, body.role, tuple(body.prefixes), body.token_sha256)
        result = _applied(await self.node.propose(meta, MetaMachine.put_user(user)))
        log.info(
            "user_put",
            node=self.node.id,
            user=user.name,
            role=user.role.value,
            prefixes=list(user.prefixes),
            token=user.token_sha256 is not None,
            changed=result["changed"],
        )
        return {"ok": True, "name": user.name, **result}

    async def delete(self, body: DeleteUser) -> dict[str, Any]:
        """On the metadata leader: remove user `name` (ok if there is none)."""
        meta = self.node.leader_group(META_GROUP, "delete-user")
        result = _applied(await self.node.propose(meta, MetaMachine.delete_user(body.name)))
        log.info("user_deleted", node=self.node.id, user=body.name, changed=result["changed"])
        return {"ok": True, "name": body.name, **result}


def _applied(result: object) -> dict[str, Any]:
    """The count of users and whether the table changed, from what applying gave."""
    if isinstance(result, dict) and result.get("error") == "token_in_use":
        raise ApiError(
            409,
            "token_in_use",
            f"user {result.get('holder')!r} already has this token; give each user its own",
            holder=result.get("holder"),
        )
    if not isinstance(result, dict) or not result.get("ok"):
        # Not reachable with the machine as it is (a user change always applies); a
        # clear retryable answer beats a KeyError if that ever changes.
        raise ApiError(503, "user_change_failed", f"the user change was not applied: {result!r}")
    return {"users": int(result["users"]), "changed": bool(result["changed"])}
