"""Scaling on real node processes, driven by the operator's own driver (reconcile/operation.py).

A 3-node cluster (4 shards, 3 replicas, fsync on) runs a workload while a fourth node
is started, joins the store and receives replicas and leaderships; then the store
shrinks back to 3 nodes: every replica is moved off node 4 before it leaves. After
each phase: every shard has 3 voters, replicas converge with identical rows, no
acknowledged write is lost and the history is linearizable.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from clusterkit import Layout, Workload, check_end_state, layout, log

from shardset.local import LocalCluster
from shardset_operator.api.models import Journal, ShardSetSpec
from shardset_operator.api.naming import Names
from shardset_operator.clients.nodeclient import NodeClient
from shardset_operator.plan.operation import planner
from shardset_operator.reconcile.operation import run_round

SHARDS = 4


@dataclass(frozen=True)
class LocalNames(Names):
    """The operator's names, with addresses of local processes instead of pod DNS."""

    ports: dict[int, tuple[int, int]] = field(default_factory=dict)  # node -> (peer, api)

    def api_url(self, node_id: int) -> str:
        return f"http://127.0.0.1:{self.ports[node_id][1]}"

    def peer_address(self, node_id: int) -> str:
        return f"127.0.0.1:{self.ports[node_id][0]}"


def names_of(cluster: LocalCluster) -> LocalNames:
    ports = {n.id: (n.peer_port, n.api_port) for n in cluster.nodes}
    return LocalNames("local", "test", ports=ports)


async def drive(
    cluster: LocalCluster,
    nodes: int,
    timeout: float = 180.0,
    shards: int = SHARDS,
    recover: frozenset[int] = frozenset(),
    until: Any = None,
) -> list[str]:
    """Rounds of the operator's driver until its operation is done (or `until()` holds);
    the notes it made."""
    spec = ShardSetSpec.model_validate({"nodes": nodes, "shards": shards})
    names = names_of(cluster)
    journal: Journal | None = None
    notes: list[str] = []
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        client = NodeClient(session)
        while time.monotonic() < deadline:
            r = await run_round(
                client,
                names,
                spec,
                planner(nodes, set()),
                cluster.node_ids,
                journal,
                lambda: datetime.now(UTC),
                budget_s=10.0,
                recover=recover,
            )
            notes += [f"{reason}: {text}" for reason, text in r.notes]
            journal = r.journal
            if (journal is None and r.waiting is None) or (until is not None and await until()):
                return notes
            log(f"round: {r.waiting or (journal.step if journal else '')}")
    raise AssertionError(f"scaling to {nodes} nodes did not finish in {timeout}s: {journal}")


async def statuses(cluster: LocalCluster) -> dict[int, dict[str, Any]]:
    out = {}
    async with aiohttp.ClientSession() as session:
        for n in cluster.nodes:
            if cluster.running(n.id):
                async with session.get(f"{n.api}/v1/status") as r:
                    out[n.id] = await r.json()
    return out


async def running_workload(
    cluster: LocalCluster, per_shard: int
) -> tuple[Layout, list[str], Workload]:
    """The cluster's layout, `per_shard` keys on every shard, and 4 clients writing
    them for 2 s already."""
    lay = await layout(cluster)
    keys = lay.keys("k", per_shard=per_shard)
    wl = Workload(cluster.endpoints, keys, clients=4, max_seconds=240.0)
    wl.start()
    await asyncio.sleep(2.0)
    return lay, keys, wl


def run(coro: Any) -> None:
    asyncio.run(coro)


def test_scale_up_to_four_nodes_and_back_under_a_workload(cluster_factory: Any) -> None:
    cluster = cluster_factory()

    async def scenario() -> None:
        lay, keys, wl = await running_workload(cluster, per_shard=3)

        new = cluster.add_node()
        t0 = time.monotonic()
        await wait_answering(new.api)
        notes = await drive(cluster, 4)
        log(f"scale 3 -> 4 took {time.monotonic() - t0:.1f}s: {notes}")
        st = await statuses(cluster)
        held = {n: sorted(int(g) for g in s["groups"] if g != "meta") for n, s in st.items()}
        assert held[4], f"node 4 received no replica: {held}"
        for shard in lay.shards:
            leader = [
                n for n, s in st.items() if s["groups"].get(str(shard), {}).get("role") == "leader"
            ]
            assert len(leader) == 1
            voters = st[leader[0]]["groups"][str(shard)]["voters"]
            assert len(voters) == 3, (shard, voters)
        assert max(len(h) for h in held.values()) - min(len(h) for h in held.values()) <= 1, held

        t1 = time.monotonic()
        notes = await drive(cluster, 3)
        log(f"scale 4 -> 3 took {time.monotonic() - t1:.1f}s: {notes}")
        st = await statuses(cluster)
        assert [g for g in st[4]["groups"] if g != "meta"] == [], st[4]["groups"]
        assert "4" not in (await shardmap(cluster))["nodes"]
        await wl.stop()
        cluster.forget_node(4)
        log(f"client errors: {dict(wl.errors)}; ops: {len(wl.history)}")
        await check_end_state(cluster, keys, wl.history)

    run(scenario())


def test_node_back_on_an_empty_volume_rejoins_and_gets_its_replicas_back(
    cluster_factory: Any, tmp_path: Any
) -> None:
    """Node 2's data directory is wiped while the workload runs (a lost volume). It
    must not bootstrap (its empty log would count as a voter's): it rejoins empty, the
    driver removes it from its groups and adds replicas back as learners."""
    cluster = cluster_factory()

    async def scenario() -> None:
        lay, keys, wl = await running_workload(cluster, per_shard=3)
        marker = tmp_path / "store-created"
        marker.write_text("true")
        cluster.node_args += ["--store-created-file", str(marker)]
        cluster.stop_node(2, kill=True)
        shutil.rmtree(cluster.node_dir(2))
        cluster.start_node(2)
        await wait_answering(cluster.node(2).api)
        st = (await statuses(cluster))[2]
        assert st["origin"] == "rejoin" and st["groups"] == {}, st
        t0 = time.monotonic()
        notes = await drive(cluster, 3)
        log(f"rejoin took {time.monotonic() - t0:.1f}s: {notes}")
        st2 = (await statuses(cluster))[2]
        assert sorted(g for g in st2["groups"] if g != "meta") == [str(s) for s in lay.shards]
        assert 2 in st2["groups"]["meta"]["voters"], st2["groups"]["meta"]
        await wl.stop()
        log(f"client errors: {dict(wl.errors)}; ops: {len(wl.history)}")
        await check_end_state(cluster, keys, wl.history)

    run(scenario())


def test_more_shards_split_online_under_a_workload(cluster_factory: Any) -> None:
    """spec.shards 4 -> 6: the driver splits the widest slot ranges into new shards
    while clients write; every key stays readable and the history linearizable."""
    cluster = cluster_factory()

    async def scenario() -> None:
        _, keys, wl = await running_workload(cluster, per_shard=4)
        t0 = time.monotonic()
        notes = await drive(cluster, 3, shards=6)
        log(f"split 4 -> 6 shards took {time.monotonic() - t0:.1f}s: {notes}")
        m = await shardmap(cluster)
        assert sorted(int(s) for s in m["replicas"]) == [1, 2, 3, 4, 5, 6], m
        await asyncio.sleep(3.0)  # the workload goes on against the new shards
        await wl.stop()
        log(f"client errors: {dict(wl.errors)}; ops: {len(wl.history)}")
        await check_end_state(cluster, keys, wl.history)

    run(scenario())


def test_a_shard_that_lost_its_quorum_is_recovered_only_when_asked(tmp_path: Any) -> None:
    """5 nodes, 4 shards, replication 3: two of one shard's three replicas are killed for
    good. Without the request nothing happens; with it, the shard is rebuilt from the
    survivor as a new shard, every acknowledged key reads back, writes work again, and
    the killed nodes' stale copies are dropped when they return."""
    from shardset import local
    from shardset.client import Client

    cluster = local.up(tmp_path / "c", 5, SHARDS, 3, remember=False, ready_timeout=60.0)
    try:

        async def scenario() -> None:
            lay = await layout(cluster)
            keys = lay.keys("q", per_shard=4)
            async with Client(cluster.endpoints) as client:
                for k in keys:
                    await client.put(k, f"v-{k}".encode())
            await asyncio.sleep(1.0)  # every replica applies them
            shard = 1
            holders = lay.replicas[shard]
            gone = holders[:2]
            for n in gone:
                cluster.stop_node(n, kill=True)
            log(f"killed nodes {gone}: shard {shard} keeps only node {holders[2]}")
            await asyncio.sleep(2.0)
            # Not asked: nothing is recovered.
            await drive(cluster, 5, timeout=8.0, until=lambda: _true())
            assert str(shard) in (await shardmap(cluster))["replicas"]

            async def recovered() -> bool:
                return str(shard) not in (await shardmap(cluster))["replicas"]

            notes = await drive(cluster, 5, recover=frozenset({shard}), until=recovered)
            log(f"recovery: {notes}")
            assert any(n.startswith("ShardRecovered") for n in notes), notes
            mine = [k for k in keys if lay.shard_of(k) == shard]  # others may be down too
            async with Client(cluster.endpoints) as client:
                for k in mine:
                    got = await client.get(k)
                    assert got.value == f"v-{k}".encode(), (k, got)
                for k in mine:
                    await client.put(k, b"after")
            for n in gone:
                cluster.start_node(n)
            for n in gone:
                await wait_answering(cluster.node(n).api)
            await drive(cluster, 5)
            st = await statuses(cluster)
            assert all(str(shard) not in s["groups"] for s in st.values()), "stale copy kept"
            async with Client(cluster.endpoints) as client:
                for k in keys:
                    want = b"after" if k in mine else f"v-{k}".encode()
                    assert (await client.get(k)).value == want, k

        run(scenario())
    finally:
        cluster.shutdown(kill=True)


async def _true() -> bool:
    return True


async def shardmap(cluster: LocalCluster) -> dict[str, Any]:
    """The shard map as the first running node has it."""
    up = next(n for n in cluster.nodes if cluster.running(n.id))
    url = f"{up.api}/v1/shardmap"
    async with aiohttp.ClientSession() as session, session.get(url) as r:
        body: dict[str, Any] = await r.json()
        return body


async def wait_answering(api: str, timeout: float = 30.0) -> None:
    """A new node answers /healthz once started (it is not ready before it is added)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(f"{api}/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError(f"{api} did not answer within {timeout}s")
