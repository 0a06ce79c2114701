"""`shardset local rebuild-node N`: a node whose data cannot be trusted, rebuilt empty
from its peers, the way the operator rebuilds a node that lost its volume
(docs/operations.md, "A pod back on an empty volume").

The case it is for: a Raft log corrupt in the middle (the node stops with a
`storage_corrupt` event naming the file and offset). Synced, acknowledged entries are
gone from that copy and nothing on the node can say which, so it must never vote or
count toward commitment with the log it has left. Nor may it simply start on an empty
directory from the bootstrap map: its empty log would count as a voter's. So:

1. the node is stopped and its data directory moved aside (`node-N.corrupt-<time>`,
   kept for diagnosis, never read again);
2. the leaders of its groups (the metadata group and every shard) remove it from their
   membership: the other replicas are a majority;
3. it starts on an empty directory with `--store-created-file`: origin "rejoin", it
   hosts no group and votes in none;
4. each group it belonged to gets it back the safe way, as a learner first: an empty
   replica created on it, added as a learner by the leader, caught up from the leader
   (log or snapshot), then promoted if it was a voter.

Every step is an admin action of the node API (shardset_proto.admin), asked of the
group's current leader; nothing here touches another node's data.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from shardset.local import LocalCluster, LocalClusterError, operator_session
from shardset.neterrors import describe
from shardset_proto import urls
from shardset_proto.admin import (
    AddLearner,
    AddNode,
    AdminBody,
    CreateReplica,
    Promote,
    RemoveReplica,
)
from shardset_proto.shardmap import NodeAddress
from shardset_proto.status import META_GROUP, GroupStatus, NodeStatus, ShardMapView

CATCH_UP_LAG = 64  # entries a learner may trail before it is promoted (as the operator)
RETRY_S = 0.3
Say = Callable[[str], None]


class RebuildError(LocalClusterError):
    pass


@dataclass(frozen=True)
class Membership:
    """The groups `node` belonged to, as their leaders saw it before the rebuild."""

    voter_of: tuple[int, ...]
    learner_of: tuple[int, ...]

    @property
    def groups(self) -> tuple[int, ...]:
        return tuple(sorted({*self.voter_of, *self.learner_of}))


class Admin:
    """Admin calls and status reads on the local cluster's nodes, until a deadline."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        apis: dict[int, str],
        deadline: float,
        admins: dict[int, str] | None = None,
    ):
        self.http = http
        self.apis = apis
        self.admins = admins or apis  # a TLS node's admin port; else its API port
        self.deadline = deadline

    def left(self, what: str) -> float:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise RebuildError(f"timed out: {what}")
        return remaining

    async def status(self, node: int) -> NodeStatus | None:
        try:
            async with self.http.get(self.apis[node] + urls.STATUS) as resp:
                return NodeStatus.model_validate(await resp.json()) if resp.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def shard_map(self, nodes: list[int]) -> ShardMapView:
        for node in nodes:
            try:
                async with self.http.get(self.apis[node] + urls.SHARDMAP) as resp:
                    if resp.status == 200:
                        return ShardMapView.model_validate(await resp.json())
            except (aiohttp.ClientError, TimeoutError, ValueError):
                continue
        raise RebuildError(f"no shard map from nodes {nodes}: none of them answers")

    async def leader(self, gid: int, among: list[int]) -> tuple[int, GroupStatus]:
        """The leader of group `gid` among `among` and its view, waiting for an election."""
        while True:
            for node in among:
                report = await self.status(node)
                view = report.group(gid) if report is not None else None
                if view is not None and view.is_leader:
                    return node, view
            self.left(f"group {gid} has no leader among nodes {among}")
            await asyncio.sleep(RETRY_S)

    async def call(self, node: int, body: AdminBody) -> dict[str, Any]:
        """POST `body` to `node`; retried while the answer says to (no leader yet, a
        change in progress); a 307 is returned for the caller to find the leader."""
        while True:
            try:
                async with self.http.post(
                    self.admins[node] + body.path(), json=body.to_json(), allow_redirects=False
                ) as resp:
                    answer = await resp.json(content_type=None)
                    if resp.status in (200, 307):
                        return {"status": resp.status, **answer}
                    if resp.status not in (409, 503):
                        raise RebuildError(f"{body.action} on node {node}: {answer}")
                    why = str(answer.get("message", answer))
            except (aiohttp.ClientError, TimeoutError) as e:
                why = f"cannot reach node {node}: {describe(e)}"
            self.left(f"{body.action} on node {node}: {why}")
            await asyncio.sleep(RETRY_S)

    async def on_leader(self, gid: int, among: list[int], body: AdminBody) -> dict[str, Any]:
        while True:
            leader, _ = await self.leader(gid, among)
            answer = await self.call(leader, body)
            if answer["status"] == 200:
                return answer
            await asyncio.sleep(RETRY_S)  # leadership moved meanwhile: ask the new one

    async def caught_up(self, gid: int, node: int, among: list[int]) -> None:
        while True:
            _, view = await self.leader(gid, among)
            lag = view.lags().get(node)
            if lag is not None and lag <= CATCH_UP_LAG:
                return
            self.left(f"node {node} did not catch up in group {gid} (lag {lag})")
            await asyncio.sleep(RETRY_S)


def check_rebuildable(shard_map: ShardMapView, node: int) -> None:
    """Refuse when a shard has no replica but `node`'s: rebuilding would lose it."""
    if node not in shard_map.nodes:
        raise RebuildError(f"node {node} is not in the shard map (nodes {sorted(shard_map.nodes)})")
    alone = [s for s, holders in sorted(shard_map.replicas.items()) if holders == [node]]
    if alone:
        raise RebuildError(
            f"shards {alone} have no replica but node {node}'s: it cannot be rebuilt from peers"
        )


async def membership(admin: Admin, node: int, others: list[int]) -> Membership:
    """Which groups `node` is a member of, as their leaders among `others` see it."""
    shard_map = await admin.shard_map(others)
    voter_of, learner_of = [], []
    for gid in [META_GROUP, *sorted(s for s, h in shard_map.replicas.items() if node in h)]:
        _, view = await admin.leader(gid, others)
        if node in view.voters:
            voter_of.append(gid)
        elif node in view.learners or gid == META_GROUP:  # every node is in the meta group
            learner_of.append(gid)
    return Membership(tuple(voter_of), tuple(learner_of))


def remembered(path: Path, found: Membership) -> Membership:
    """`found` joined with what an interrupted earlier run recorded in `path` (the
    groups it had already removed the node from no longer list it), written back
    before anything is removed, so a second run gives every group back."""
    voter_of, learner_of = set(found.voter_of), set(found.learner_of)
    if path.exists():
        try:
            earlier = json.loads(path.read_text())
            voter_of |= set(earlier["voter_of"])
            learner_of |= set(earlier["learner_of"]) - voter_of
        except (ValueError, KeyError, TypeError):
            raise RebuildError(f"{path} is corrupt: remove it and run again") from None
    m = Membership(tuple(sorted(voter_of)), tuple(sorted(learner_of - voter_of)))
    path.write_text(json.dumps({"voter_of": m.voter_of, "learner_of": m.learner_of}))
    return m


async def remove_everywhere(admin: Admin, node: int, others: list[int], m: Membership) -> None:
    for gid in m.groups:
        await admin.on_leader(gid, others, RemoveReplica(shard=gid, node=node))


async def add_back(
    admin: Admin, node: int, others: list[int], m: Membership, addr: NodeAddress, say: Say
) -> None:
    """Every group `node` left, given back as the operator does: learner first."""
    for gid in m.groups:
        name = "the metadata group" if gid == META_GROUP else f"shard {gid}"
        await admin.call(node, CreateReplica(shard=gid))
        if gid == META_GROUP:  # add-node: the address is known, it adds the learner
            add = AddNode(
                node=node,
                peer=addr.peer,
                api=addr.api,
                admin=addr.admin or None,
                wire=addr.wire or None,
            )
            await admin.on_leader(gid, others, add)
        else:
            await admin.on_leader(gid, others, AddLearner(shard=gid, node=node))
        await admin.caught_up(gid, node, others)
        if gid in m.voter_of:
            await admin.on_leader(gid, others, Promote(shard=gid, node=node))
        say(f"node {node} is back in {name}")


def set_aside(node_dir: Path) -> Path | None:
    """Move a node's data directory out of the way (kept, never read again)."""
    if not node_dir.exists():
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = node_dir.with_name(f"{node_dir.name}.corrupt-{stamp}")
    n = 0
    while target.exists():
        n += 1
        target = node_dir.with_name(f"{node_dir.name}.corrupt-{stamp}-{n}")
    node_dir.rename(target)
    return target


def rebuild_node(cluster: LocalCluster, node: int, *, timeout: float, say: Say) -> Path | None:
    """Rebuild `node` of a local cluster empty from its peers (see the module's doc);
    returns where its old data directory was moved, if it had one."""
    cluster.node(node)  # names the node ids there are if it is not one
    others = [n for n in cluster.node_ids if n != node and cluster.running(n)]
    if not others:
        raise RebuildError(f"no other node of {cluster.data_dir} runs: nothing to rebuild from")
    return asyncio.run(_rebuild(cluster, node, others, time.monotonic() + timeout, say))


async def _rebuild(
    cluster: LocalCluster, node: int, others: list[int], deadline: float, say: Say
) -> Path | None:
    async with operator_session(cluster) as http:
        apis = {n.id: n.api for n in cluster.nodes}
        admin = Admin(http, apis, deadline, {n.id: n.admin for n in cluster.nodes})
        check_rebuildable(await admin.shard_map(others), node)
        cluster.stop_node(node)
        m = remembered(
            cluster.data_dir / f"node-{node}.rebuild.json", await membership(admin, node, others)
        )
        say(f"node {node} stopped; removing it from groups {list(m.groups)} (0: metadata)")
        await remove_everywhere(admin, node, others, m)
        moved = set_aside(cluster.node_dir(node))
        if moved is not None:
            say(f"its old data directory is kept in {moved} (never read again)")
        cluster.mark_rejoin(node)
        cluster.start_node(node)
        while await admin.status(node) is None:
            admin.left(f"node {node} did not start; see {cluster.log_path(node)}")
            await asyncio.sleep(RETRY_S)
        say(f"node {node} started empty (origin rejoin); adding its replicas back as learners")
        await add_back(admin, node, others, m, cluster.node(node).address, say)
    cluster.wait_ready(max(1.0, deadline - time.monotonic()))
    (cluster.data_dir / f"node-{node}.rebuild.json").unlink(missing_ok=True)
    return moved
