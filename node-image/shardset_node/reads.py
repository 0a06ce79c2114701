"""The read path of a node: each consistency mode decides who may answer and from
which state (docs/consistency.md has the guarantees and the partition table).

* linearizable / lease: only the leader; a ReadIndex round or the leader lease gives a
  read index, and the read waits until it is applied here.
* bounded: the leader (lease read), or a follower holding a FreshnessProof: the leader's
  answer to a ReadIndex request the follower sent at most `bound` ms ago, applied here.
  Proofs are fetched on demand (one request in flight per shard, shared by every read
  waiting for it) and reused while they are young enough.
* session: any replica whose applied index reached the client's token for the shard;
  it waits briefly for it, else sends the client to the leader.
* eventual: any replica, at once.

Every answer names the mode that served it, the node that did, and the index of the
state it was read from; a replica that cannot serve the mode redirects (307) to the
leader, or refuses with 503 when no leader is known.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import time
from typing import Any

import aiohttp

from shardset_node.consistency import (
    FreshnessProof,
    ReadPolicy,
    proves,
    resolve,
)
from shardset_node.core import Node
from shardset_node.peers.client import PeerClient
from shardset_node.replication.group import ReplicaGroup
from shardset_proto.admin import ReadIndex
from shardset_proto.consistency import LEADER_MODES
from shardset_proto.errors import ApiError
from shardset_raft import Role

# The clock freshness proofs are measured on (a test substitutes one it steps).
clock = time.monotonic

SESSION_WAIT = 1.0  # seconds a replica waits to reach a client's session token
PROOF_TIMEOUT = 1.0  # seconds a follower waits for the leader's read index


class ReadPath:
    def __init__(self, node: Node, peers: PeerClient, policy: ReadPolicy) -> None:
        self.node = node
        self.peers = peers
        self.policy = policy
        self.served: collections.Counter[str] = collections.Counter()
        self.refused: collections.Counter[str] = collections.Counter()
        self._reached: dict[int, FreshnessProof] = {}  # applied here already
        self._pending: dict[int, FreshnessProof] = {}  # not applied here yet
        self._asking: dict[int, asyncio.Task[FreshnessProof | None]] = {}

    async def close(self) -> None:
        for task in self._asking.values():
            task.cancel()

    # --- operations -----------------------------------------------------------------
    async def get(
        self, key: bytes, mode: str | None, bound: int | None, token: int, path: str
    ) -> dict[str, Any]:
        chosen, bound = resolve(self.policy, mode, bound)
        g = self.node.group_for_key(key, path)
        index, extra = await self._counted(g, chosen, bound, token, path)
        value = self.node.engine.get(g.id, key)  # no await since `index` was taken
        return {
            "key": key.decode(),
            "value": value,  # raw bytes: each protocol encodes it (HTTP: base64)
            **self._meta(g, chosen, index),
            **extra,
        }

    async def scan(
        self,
        shard: int,
        start: str,
        end: str | None,
        limit: int,
        mode: str | None,
        bound: int | None,
        token: int,
        path: str,
    ) -> dict[str, Any]:
        chosen, bound = resolve(self.policy, mode, bound)
        g = self.node.group(shard, path)
        index, extra = await self._counted(g, chosen, bound, token, path)
        end_key = None if end is None else end.encode()
        items = self.node.engine.scan(g.id, start.encode(), end_key, limit)
        return {
            "items": [[k.decode(), base64.b64encode(v).decode()] for k, v in items],
            **self._meta(g, chosen, index),
            **extra,
        }

    def _meta(self, g: ReplicaGroup, mode: str, index: int) -> dict[str, Any]:
        # The index of the state just read, never below it: after a restart the engine
        # may hold entries past Raft's applied index (it applied them before the crash,
        # and commit-only hard states are not synced), and apply() skips those.
        held = self.node.engine.applied_index(g.id)
        return {
            "shard": g.id,
            "index": max(index, g.raft.applied, held),
            "epoch": self.node.meta.map.epoch,
            "consistency": mode,
            "replica": self.node.id,
        }

    async def _counted(
        self, g: ReplicaGroup, mode: str, bound: int | None, token: int, path: str
    ) -> tuple[int, dict[str, Any]]:
        try:
            found = await self._serve(g, mode, bound, token, path)
        except ApiError:
            self.refused[mode] += 1
            raise
        self.served[mode] += 1
        return found

    async def _serve(
        self, g: ReplicaGroup, mode: str, bound: int | None, token: int, path: str
    ) -> tuple[int, dict[str, Any]]:
        """(index of the state to read, extra answer fields) once this replica may serve."""
        if mode in LEADER_MODES:
            return await self._on_leader(g, mode, path), {}
        if mode == "session":
            return await self._session(g, token, path), {}
        if mode == "bounded":
            assert bound is not None  # resolve() guarantees it
            return await self._bounded(g, bound, path)
        return g.raft.applied, {}  # eventual

    # --- modes ----------------------------------------------------------------------
    async def _on_leader(self, g: ReplicaGroup, mode: str, path: str) -> int:
        if g.raft.role != Role.LEADER:
            raise self._elsewhere(g, path, f"{mode} reads are served by the shard's leader")
        try:
            index = await self.node.wait(g, g.read_index(use_lease=mode == "lease"), path)
        except ApiError as e:
            if e.code != "no_leader":
                raise
            raise self._elsewhere(g, path, f"node {self.node.id} lost the leadership") from None
        return int(index)

    async def _session(self, g: ReplicaGroup, token: int, path: str) -> int:
        if g.raft.role == Role.LEADER:
            self._check_not_ahead(g, token)
        if g.raft.applied < token:
            try:
                await asyncio.wait_for(g.wait_applied(token), SESSION_WAIT)
            except TimeoutError:
                if g.raft.role == Role.LEADER:  # no one else to send the client to
                    raise ApiError(
                        503,
                        "index_not_reached",
                        f"node {self.node.id} leads shard {g.id} and has applied it up to "
                        f"{g.raft.applied} (commit index {g.raft.committed}), behind the "
                        f"session's index {token} after waiting {SESSION_WAIT}s; retry later",
                        retry_after=1,
                        shard=g.id,
                        commit_index=g.raft.committed,
                    ) from None
                raise self._elsewhere(
                    g,
                    path,
                    f"node {self.node.id} has applied shard {g.id} up to {g.raft.applied}, "
                    f"behind the session's index {token} after waiting {SESSION_WAIT}s",
                ) from None
        return g.raft.applied

    def _check_not_ahead(self, g: ReplicaGroup, token: int) -> None:
        """A token past the leader's last log index was never an index of this shard
        (a client's mistake, or a token of another shard or store): no wait reaches it."""
        last = g.raft.log.last_index()
        if token > last:
            raise ApiError(
                400,
                "index_ahead",
                f"min_index {token} is ahead of shard {g.id}: its leader (node "
                f"{self.node.id}) has logged up to index {last} and committed "
                f"{g.raft.committed}; a session token is an index this store answered",
                shard=g.id,
                commit_index=g.raft.committed,
                last_index=last,
            )

    async def _bounded(self, g: ReplicaGroup, bound: int, path: str) -> tuple[int, dict[str, Any]]:
        if g.raft.role == Role.LEADER:
            return await self._on_leader(g, "lease", path), {"staleness_ms": 0.0}
        proven = self._proven(g, bound)
        if proven is None:
            fresh = await self._ask_leader(g)
            if fresh is not None:
                remaining = bound / 1000 - (clock() - fresh.asked_at)
                if g.raft.applied < fresh.index and remaining > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(g.wait_applied(fresh.index), remaining)
            proven = self._proven(g, bound)
        if proven is None:
            raise self._elsewhere(
                g,
                path,
                f"node {self.node.id} cannot prove its copy of shard {g.id} is at most "
                f"{bound} ms stale (no fresh read index from the leader, or not applied yet)",
            )
        applied, staleness = proven
        return applied, {"staleness_ms": round(staleness, 3)}

    def _proven(self, g: ReplicaGroup, bound: int) -> tuple[int, float] | None:
        """(applied index, staleness in ms) if the youngest proof this replica has applied
        proves `bound`. Both come from ONE reading of the clock and of the applied index:
        a claim read from the clock a second time (after the check) could exceed the
        bound the check just proved, as it did under load (201 ms claimed for 200)."""
        applied, now = g.raft.applied, clock()
        pending = self._pending.get(g.id)
        if pending is not None and pending.index <= applied:
            self._reached[g.id] = pending
            del self._pending[g.id]
        proof = self._reached.get(g.id)
        if not proves(proof, now, applied, bound) or proof is None:
            return None
        return applied, proof.staleness_ms(now, applied) or 0.0

    async def _ask_leader(self, g: ReplicaGroup) -> FreshnessProof | None:
        task = self._asking.get(g.id)
        if task is None or task.done():
            task = asyncio.create_task(self._fetch_proof(g), name=f"read-index-{g.id}")
            self._asking[g.id] = task
        return await asyncio.shield(task)

    async def _fetch_proof(self, g: ReplicaGroup) -> FreshnessProof | None:
        leader = g.raft.leader
        nodes = self.node.meta.map.nodes
        if leader in (0, self.node.id) or leader not in nodes:
            return None
        asked_at = clock()  # before the request leaves: the proof's origin
        try:
            answer = await self.peers.call(leader, ReadIndex(shard=g.id), timeout=PROOF_TIMEOUT)
            index = int(answer["index"])
        except (ApiError, aiohttp.ClientError, TimeoutError, ValueError, KeyError):
            return None
        proof = FreshnessProof(asked_at, index)
        if g.raft.applied >= index:
            self._reached[g.id] = proof
        else:
            self._pending[g.id] = proof
        return proof

    def _elsewhere(self, g: ReplicaGroup, path: str, why: str) -> ApiError:
        """Send the client to the leader (307), or refuse (503) when none is known."""
        leader = g.raft.leader
        if leader not in (0, self.node.id) and leader in self.node.meta.map.nodes:
            err = self.node.redirect(g.id, leader, path)
            return ApiError(
                err.status, err.code, f"{why}; node {leader} leads shard {g.id}",
                location=err.location, **err.extra,
            )  # fmt: skip
        return ApiError(
            503,
            "no_leader",
            f"{why}, and node {self.node.id} knows no leader for shard {g.id} (it may be cut "
            "off from the majority); retry later, or read with consistency=eventual",
            retry_after=1,
            shard=g.id,
            leader=None,
            replica=self.node.id,
        )
