"""Rebuilding a corrupt replica from its shard's leader (issue 15).

A replica is corrupt when a row failed its checksum (the engine records it, and serves
nothing of the shard from then on) or when a consistency check outvoted it
(`rebuild-replica`). The safest repair that needs no membership change: a corrupt
leader hands its leadership to an up-to-date voter first; then, as a follower, it asks
the leader for its whole state (`shard-state`, exported through the leader's checksum
checks, at an index at least the one this engine has applied) and installs it in one
transaction. The Raft log is untouched: entries above the installed index apply as usual.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib

import structlog

from shardset_node.core import Node
from shardset_node.peers.client import PeerClient
from shardset_node.replication.group import ReplicaGroup
from shardset_node.replication.machines import ShardMachine
from shardset_proto.admin import ShardState
from shardset_proto.errors import ApiError
from shardset_raft import RaftError, Role

log = structlog.get_logger(__name__)

POLL = 0.5  # seconds between looks at the engine's corrupt shards
MAX_BACKOFF = 5.0  # seconds between attempts of one rebuild, at most
HANDOFF_WAIT = 40  # polls of 0.1 s for a leadership transfer to take effect


class Rebuilder:
    """Watches the engine's corrupt shards and rebuilds each from its leader."""

    def __init__(self, node: Node, peers: PeerClient) -> None:
        self.node = node
        self.peers = peers
        self.rebuilt: collections.Counter[int] = collections.Counter()  # shard -> count
        self._running: dict[int, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="rebuilder")

    async def stop(self) -> None:
        for task in [self._task, *self._running.values()]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(POLL)
            for shard in list(self.node.engine.corrupt):
                if shard not in self._running and shard in self.node.host.groups:
                    self._running[shard] = asyncio.create_task(
                        self._rebuild(shard), name=f"rebuild-{shard}"
                    )

    async def _rebuild(self, shard: int) -> None:
        delay = POLL
        try:
            while not await self._attempt(shard):
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)
        finally:
            self._running.pop(shard, None)

    async def _attempt(self, shard: int) -> bool:
        """One try; True when done (rebuilt, or nothing left to rebuild)."""
        g = self.node.host.groups.get(shard)
        if g is None or shard not in self.node.engine.corrupt:
            return True
        try:
            if g.raft.role == Role.LEADER:
                await self._hand_off(g)
                return False
            return await self._fetch_and_install(g)
        except (ApiError, RaftError, ValueError, KeyError) as e:
            log.warning("replica_rebuild_retry", shard=shard, node=self.node.id, error=str(e))
            return False

    async def _hand_off(self, g: ReplicaGroup) -> None:
        """A corrupt leader serves nothing: give the leadership to the best voter."""
        r = g.raft
        others = [p for p in r.conf.voters if p != self.node.id]
        if not others:
            raise ApiError(503, "no_peer", f"shard {g.id} has no other voter to rebuild from")
        to = max(others, key=lambda p: r.progress[p].match if p in r.progress else -1)
        log.warning("corrupt_leader_hands_off", shard=g.id, node=self.node.id, to=to)
        await self.node.wait(g, g.transfer_leadership(to), "")
        for _ in range(HANDOFF_WAIT):
            if r.role != Role.LEADER:
                return
            await asyncio.sleep(0.1)

    async def _fetch_and_install(self, g: ReplicaGroup) -> bool:
        leader = g.raft.leader
        if leader in (0, self.node.id) or leader not in self.node.meta.map.nodes:
            return False
        machine = g.machine
        if not isinstance(machine, ShardMachine):
            return True
        # At least what this engine has applied (else the install is refused) and what
        # it knows committed (it will have applied that by the time the answer is back).
        want = max(self.node.engine.applied_index(g.id), g.raft.committed)
        answer = await self.peers.call(leader, ShardState(shard=g.id, min_index=want))
        index, data = int(answer["index"]), base64.b64decode(answer["data"])
        # Synchronous from here: no apply runs between the index check and the import.
        if not machine.install_state(index, data):
            return False
        self.rebuilt[g.id] += 1
        log.warning("replica_rebuilt_from_leader", shard=g.id, node=self.node.id,
                    leader=leader, index=index)  # fmt: skip
        return True
