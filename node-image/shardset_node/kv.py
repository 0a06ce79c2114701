"""Key-value writes: put, delete and compare-and-set, each proposed to the leader of the
shard owning the key (reads are in reads.py)."""

from __future__ import annotations

import base64
from typing import Any

from shardset_node.core import Node, moving
from shardset_proto.commands import Cas, Delete, Put, encode_command
from shardset_proto.errors import ApiError
from shardset_proto.slots import slot_of
from shardset_raft import Role


class KvWrites:
    def __init__(self, node: Node) -> None:
        self.node = node

    async def put(self, key: bytes, value: bytes, idem: bytes | None, path: str) -> dict[str, Any]:
        return await self._write(key, encode_command(Put(key, value, idem)), path)

    async def delete(self, key: bytes, idem: bytes | None, path: str) -> dict[str, Any]:
        return await self._write(key, encode_command(Delete(key, idem)), path)

    async def cas(
        self, key: bytes, expected: bytes | None, value: bytes | None, idem: bytes | None, path: str
    ) -> dict[str, Any]:
        return await self._write(key, encode_command(Cas(key, expected, value, idem)), path)

    async def _write(self, key: bytes, command: bytes, path: str) -> dict[str, Any]:
        node = self.node
        g = node.group_for_key(key, path)
        if g.raft.role != Role.LEADER:
            raise node.redirect(g.id, g.raft.leader, path)
        node.check_writable(g.id)  # low disk space: 507 at once
        index, result = await node.wait(g, g.propose(command), path)
        if isinstance(result, dict) and result.get("error") == "slot_moved":
            raise moving(g.id, slot_of(key), node.meta.map.epoch)
        if isinstance(result, dict) and result.get("error") == "replica_corrupt":
            # Committed, but this (leader) replica read a corrupt value and could not
            # compute the outcome; the other replicas did. Issue 15.
            raise ApiError(
                503,
                "replica_corrupt",
                f"node {node.id}'s replica of shard {g.id} is corrupt: the write was "
                f"committed at index {index} but its outcome is unknown here; retry with the "
                "same Idempotency-Key (another replica will lead and answer)",
                retry_after=1,
                shard=g.id,
                index=index,
            )
        body = {"shard": g.id, "index": index, "epoch": node.meta.map.epoch, "replica": node.id}
        if isinstance(result, dict):
            body.update({k: _jsonable(v) for k, v in result.items()})
        return body


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value
