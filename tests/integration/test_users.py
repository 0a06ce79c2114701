"""The store's users on real node processes (issue 16): a user put through any node's
admin API reaches every node's table (the one requests are authenticated against), a
deleted one leaves every node's, and the table survives restarts: a node that restarts
from its own compacted snapshot, and one that was down while the leader compacted past
it, so it is brought back by the leader's snapshot (which then carries the users).

Each node's table is observed through its `shardset_users` gauge (a count: names and
token digests are never exposed there)."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import aiohttp
from clusterkit import get_json, installed_snapshots, log, snap_files, snap_index
from conftest import ClusterFactory

from shardset.local import LocalCluster
from shardset_proto.identity import token_digest
from shardset_proto.status import group_key

COMPACT_EVERY = 20  # metadata entries between snapshots: a few dozen user changes compact
WAIT_S = 20.0  # bound of every wait (the change itself takes a heartbeat or two)
_GAUGE = re.compile(r"^shardset_users (\S+)$", re.M)


async def admin(
    session: aiohttp.ClientSession, url: str, action: str, body: dict[str, Any]
) -> dict[str, Any]:
    """POST an admin action to `url`, following the one redirect to the metadata leader
    (as the operator does), retrying while no leader is known."""
    deadline = time.monotonic() + WAIT_S
    while True:
        async with session.post(f"{url}/v1/admin/{action}", json=body) as r:
            answer: dict[str, Any] = await r.json()
        if r.status == 307:
            url = answer["leader_url"]
            continue
        if r.status == 200:
            return answer
        assert r.status == 503 and time.monotonic() < deadline, (r.status, answer)
        await asyncio.sleep(0.2)


async def user_counts(session: aiohttp.ClientSession, cluster: LocalCluster) -> dict[int, int]:
    counts = {}
    for n in cluster.node_ids:
        try:
            async with session.get(f"{cluster.node(n).api}/metrics") as r:
                found = _GAUGE.search(await r.text())
        except aiohttp.ClientError:
            continue  # down: not counted
        if found:
            counts[n] = int(float(found.group(1)))
    return counts


async def wait_counts(
    session: aiohttp.ClientSession, cluster: LocalCluster, expected: int
) -> dict[int, int]:
    want = dict.fromkeys(cluster.node_ids, expected)
    deadline = time.monotonic() + WAIT_S
    counts: dict[int, int] = {}
    while time.monotonic() < deadline:
        counts = await user_counts(session, cluster)
        if counts == want:
            return counts
        await asyncio.sleep(0.1)
    raise AssertionError(f"users per node {counts}, expected {want}")


def meta_snapshot_index(cluster: LocalCluster, node: int) -> int:
    names = snap_files(cluster.node_dir(node) / "raft" / "snap")
    return max((snap_index(n)[2] for n in names if snap_index(n)[0] == 0), default=0)


async def meta_applied(session: aiohttp.ClientSession, cluster: LocalCluster, node: int) -> int:
    status = await get_json(session, f"{cluster.node(node).api}/v1/status")
    assert status is not None, f"node {node} did not answer its status"
    return int(status["groups"][group_key(0)]["applied"])


async def churn(session: aiohttp.ClientSession, url: str, times: int) -> None:
    """Metadata entries enough to compact the group: one user put again and again."""
    for i in range(times):
        role = ("read", "readwrite")[i % 2]
        await admin(session, url, "put-user", {"name": "churn", "role": role})


def test_users_reach_every_node_and_survive_restarts_and_snapshots(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = cluster_factory(node_args=["--compact-every", str(COMPACT_EVERY)])

    async def run() -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
            url = cluster.node(3).api  # any node: a non-leader redirects to the leader
            alice = {"name": "alice", "role": "readwrite", "token_sha256": token_digest("a")}
            answer = await admin(session, url, "put-user", alice)
            assert (answer["ok"], answer["users"]) == (True, 1)
            await wait_counts(session, cluster, 1)
            log("put: every node has the user")

            await admin(session, url, "delete-user", {"name": "alice"})
            await wait_counts(session, cluster, 0)
            again = await admin(session, url, "delete-user", {"name": "alice"})
            assert (again["ok"], again["users"], again["changed"]) == (True, 0, False)
            log("delete: the user is gone from every node")

            # Two users, then enough entries that every node compacts its metadata group.
            await admin(session, url, "put-user", alice)
            await admin(session, url, "put-user", {"name": "bob", "role": "read"})
            await churn(session, url, 2 * COMPACT_EVERY)
            await wait_counts(session, cluster, 3)
            for n in cluster.node_ids:
                assert meta_snapshot_index(cluster, n) > 0, f"node {n} did not compact"

            # Node 2 restarts from its own snapshot (users included) and log.
            cluster.stop_node(2)
            cluster.start_node(2)
            cluster.wait_ready(timeout=WAIT_S * 2)
            await wait_counts(session, cluster, 3)
            log("restart: node 2 has the users")

            # Node 3 is down while users change and the leader compacts past it: it comes
            # back through the leader's snapshot, which must carry the new table.
            down_at = await meta_applied(session, cluster, 3)
            cluster.stop_node(3)
            url = cluster.node(1).api
            await admin(session, url, "delete-user", {"name": "bob"})
            for name in ("carol", "dave"):
                await admin(session, url, "put-user", {"name": name, "role": "read"})
            await churn(session, url, 2 * COMPACT_EVERY)
            cluster.start_node(3)
            cluster.wait_ready(timeout=WAIT_S * 2)
            await wait_counts(session, cluster, 4)  # alice, churn, carol, dave
            wal = cluster.node_dir(3) / "raft" / "wal"
            received = [i for g, _, i in installed_snapshots(wal) if g == 0 and i > down_at]
            assert received, "node 3 caught up from the log, not from the leader's snapshot"
            log("snapshot: node 3 has the users")

    asyncio.run(run())
