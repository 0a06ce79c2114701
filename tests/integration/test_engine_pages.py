"""Engine PAGE corruption with real node processes (issue 15, disk fault tests).

A node is stopped and one b-tree page of its kv.sqlite3 damaged (the page-type byte of
a leaf of the kv table, as a flipped disk byte would): SQLite then calls the file
malformed on whatever touches the page. Before, the node served 500s for the keys on that
page and its Raft loop died on the first apply touching it, again after every restart.
Now the restart's quick_check quarantines the file, a fresh engine is refilled from the
node's own snapshots and log (storage/enginecheck.py), and every acknowledged key reads
back from that node, exactly, eventual and (after a leadership move to it) linearizable.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from clusterkit import layout, log, stable_leaders, wait_converged

from shardset.client import Client
from shardset.local import LocalCluster


def _value(key: str) -> bytes:
    return f"value-of-{key}-".encode() * 20  # ~400 bytes: the keys fill several pages


async def _read(session: aiohttp.ClientSession, api: str, key: str, mode: str) -> bytes | None:
    async with session.get(f"{api}/v1/kv/{key}?consistency={mode}", allow_redirects=False) as r:
        text = await r.text()
        assert r.status == 200, (key, mode, r.status, text[:300])  # never a 500 or a 404
        return base64.b64decode(json.loads(text)["value"])


async def _until_leads(session: aiohttp.ClientSession, api: str, shard: int, node: int) -> None:
    for _ in range(150):  # bounded: 15 s
        async with session.get(f"{api}/v1/status") as r:
            group = (await r.json())["groups"][str(shard)]
        if group["role"] == "leader":
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"node {node} did not take the leadership of shard {shard}")


def _events(cluster: LocalCluster, node: int, name: str) -> list[dict[str, Any]]:
    out = []
    for line in cluster.log_path(node).read_text().splitlines():
        if line.startswith("{") and f'"{name}"' in line:
            out.append(json.loads(line))
    return out


async def _put_all(cluster: LocalCluster, keys: list[str]) -> None:
    client = Client(cluster.endpoints)
    try:
        for k in keys:
            await client.put(k, _value(k))
    finally:
        await client.close()


def test_a_damaged_engine_page_is_quarantined_and_refilled(
    cluster_factory: Any, damage_leaf: Callable[[Path], int]
) -> None:
    # Compaction every 40 entries: the refill needs the stored snapshots AND the log.
    cluster: LocalCluster = cluster_factory(node_args=("--compact-every", "40"))

    async def scenario() -> None:
        lay = await layout(cluster)
        keys = lay.keys("pg", 60)
        await _put_all(cluster, keys)  # every put acknowledged
        await wait_converged(cluster)
        victim = 2
        cluster.stop_node(victim)
        db_file = cluster.node_dir(victim) / "kv.sqlite3"
        page = damage_leaf(db_file)
        log(f"damaged page {page} of {db_file}")
        cluster.start_node(victim)
        await wait_converged(cluster)
        api = cluster.node(victim).api
        async with aiohttp.ClientSession() as session:
            for k in keys:  # every acknowledged key, from the victim's own engine
                assert await _read(session, api, k, "eventual") == _value(k), k
            shard = lay.shard_of(keys[0])
            leader = (await stable_leaders(cluster, [shard]))[shard]
            if leader != victim:
                url = f"{cluster.node(leader).api}/v1/admin/transfer-leader"
                async with session.post(url, json={"shard": shard, "to": victim}) as r:
                    assert r.status == 200, await r.text()
            await _until_leads(session, api, shard, victim)
            for k in (k for k in keys if lay.shard_of(k) == shard):
                got = await _read(session, api, k, "linearizable")
                assert got == _value(k), k
        more = lay.keys("after", 5)  # and it keeps applying
        await _put_all(cluster, more)
        await wait_converged(cluster)
        async with aiohttp.ClientSession() as session:
            for k in more:
                assert await _read(session, api, k, "eventual") == _value(k), k
        assert not _events(cluster, victim, "raft_loop_failed")
        (event,) = _events(cluster, victim, "engine_quarantined")
        assert "quick_check" in event["reason"], event
        assert (Path(event["quarantine"]) / "kv.sqlite3").exists()  # kept for forensics

    asyncio.run(scenario())


async def _answer(session: aiohttp.ClientSession, api: str, key: str) -> tuple[int, str]:
    async with session.get(f"{api}/v1/kv/{key}?consistency=eventual") as r:
        return r.status, await r.text()


async def _reads_while_damaged(cluster: LocalCluster, node: int, keys: list[str]) -> list[int]:
    """Eventual reads of every key on `node`: the exact value or 503 replica_corrupt,
    never a 500, a changed value or a miss. The statuses seen (the node may exit)."""
    seen = []
    async with aiohttp.ClientSession() as session:
        for k in keys:
            try:
                status, text = await _answer(session, cluster.node(node).api, k)
            except aiohttp.ClientConnectionError:
                break  # the node exited (crash-only): checked below
            seen.append(status)
            if status == 200:
                assert base64.b64decode(json.loads(text)["value"]) == _value(k), k
            else:
                assert status == 503 and json.loads(text)["error"] == "replica_corrupt", text
    return seen


def test_a_page_found_damaged_while_running_is_never_served_and_repaired(
    cluster_factory: Any, damage_leaf: Callable[[Path], int]
) -> None:
    """The page is damaged under a running node (its quick_check at open passed): the
    first read touching it answers 503 replica_corrupt, the node serves nothing more and
    exits 70; started again, it quarantines the file and refills it from its log."""
    cluster: LocalCluster = cluster_factory(node_args=("--compact-every", "40"))

    async def scenario() -> None:
        lay = await layout(cluster)
        keys = lay.keys("rt", 60)
        await _put_all(cluster, keys)
        await wait_converged(cluster)
        victim = 3
        cluster.stop_node(victim)  # a clean stop: every page in the main file
        cluster.start_node(victim)
        await wait_converged(cluster)
        page = damage_leaf(cluster.node_dir(victim) / "kv.sqlite3")
        log(f"damaged page {page} under the running node {victim}")
        seen = await _reads_while_damaged(cluster, victim, keys)
        log(f"statuses while damaged: {seen}")
        assert 503 in seen or not cluster.running(victim), seen
        for _ in range(200):  # bounded: 20 s
            if not cluster.running(victim):
                break
            await asyncio.sleep(0.1)
        assert not cluster.running(victim), "a node with a malformed engine must exit"
        (fatal,) = _events(cluster, victim, "node_fatal")
        assert fatal["exit_code"] == 70 and "malformed" in fatal["error"], fatal
        assert _events(cluster, victim, "engine_malformed")
        cluster.start_node(victim)
        await wait_converged(cluster)
        (event,) = _events(cluster, victim, "engine_quarantined")
        assert "marked malformed" in event["reason"], event
        async with aiohttp.ClientSession() as session:
            for k in keys:
                assert await _read(session, cluster.node(victim).api, k, "eventual") == _value(k)

    asyncio.run(scenario())
