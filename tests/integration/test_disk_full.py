"""A node whose data file system fills up (a small tmpfs), on a real 3-node cluster
(issue 15: "Full disk"): writes to it are refused with 507 insufficient_storage (not a
timeout), its leaderships move to the other nodes, safe reads are still served from it,
/readyz and /v1/status say the disk is full, it recovers by itself once space returns,
and no acknowledged write is lost (the end-state checks of test_faults.py).

Two ways: a disk with no byte left and no reserve kept (a write fails with ENOSPC: the
node's Raft groups stall, the others elect leaders), and free space below the node's
reserve (SHARDSET_MIN_FREE_MB) while writes still fit (writes refused, leaderships
handed off by transfer, nothing stalls)."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from clusterkit import (
    Layout,
    Workload,
    check_end_state,
    get_json,
    layout,
    log,
    shard_leaders,
    stable_leaders,
)
from conftest import ClusterFactory

from shardset.client import Client
from shardset.local import LocalCluster

FULL = 3  # the node whose disk fills
TIMEOUT = 150.0
MIN_FREE_MB = 4
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")


@pytest.fixture
def small_disk_cluster(
    cluster_factory: ClusterFactory,
    monkeypatch: pytest.MonkeyPatch,
    mount_tmpfs: Callable[[Path, str], Path],
) -> Iterator[LocalCluster]:
    """The cluster, with node FULL's data directory moved onto a 24 MiB tmpfs; node
    FULL keeps no reserve of free space (it runs into ENOSPC)."""
    cluster = cluster_factory()
    data = cluster.node_dir(FULL)
    cluster.stop_node(FULL)
    aside = data.with_name(data.name + "-aside")
    data.rename(aside)
    mount_tmpfs(data, "24m")
    try:
        shutil.copytree(aside, data, dirs_exist_ok=True)
        monkeypatch.setenv("SHARDSET_MIN_FREE_MB", "0")  # inherited by node FULL alone
        cluster.start_node(FULL)
        cluster.wait_ready(60.0)
        yield cluster
    finally:
        cluster.stop_node(FULL, kill=True)  # before mount_tmpfs unmounts its data


# tests/conftest.py's fill(directory, leave=0): a ballast taking the free space.
Fill = Callable[..., Path]


async def put(http: aiohttp.ClientSession, node: str, key: str, value: str) -> dict[str, Any]:
    """A PUT straight to `node` (no redirect followed): its status and body."""
    async with http.put(
        f"{node}/v1/kv/{key}",
        data=value.encode(),
        allow_redirects=False,
        timeout=aiohttp.ClientTimeout(total=15),
    ) as r:
        return {"status": r.status, **(await r.json())}


async def lead_everything_from(cluster: LocalCluster, lay: Layout, node: int) -> None:
    for _ in range(10):
        leaders = await stable_leaders(cluster, lay.shards)
        if all(n == node for n in leaders.values()):
            return
        async with aiohttp.ClientSession() as http:
            for shard, leader in leaders.items():
                if leader != node:
                    await http.post(
                        f"{cluster.node(leader).api}/v1/admin/transfer-leader",
                        json={"shard": shard, "to": node},
                        timeout=aiohttp.ClientTimeout(10),
                    )
        await asyncio.sleep(1.0)
    raise AssertionError(f"node {node} did not take every leadership")


async def until(what: str, check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.25)
    raise AssertionError(f"{what} within {timeout}s")


async def refused_writes(
    http: aiohttp.ClientSession, api: str, keys: list[str], allowed: dict[str, set[str]]
) -> None:
    """Direct writes to the full node until one is refused. The disk is full, but the
    WAL's last page may still take a few records. `allowed`: key -> the values it may
    end with (the last acknowledged one, and any later write whose outcome is unknown)."""
    for i in range(200):
        key, value = keys[i % len(keys)], f"direct-{i}"
        answer = await put(http, api, key, value)
        if answer["status"] == 200:
            allowed[key] = {value}
            continue
        assert (answer["status"], answer["error"]) == (507, "insufficient_storage"), answer
        assert "disk is full" in answer["message"]
        if "may or may not" in answer["message"]:
            allowed[key].add(value)  # proposed before the disk refused its round
        # Refused at once from now on, every time, naming the cause: never applied.
        again = await put(http, api, key, f"direct-again-{i}")
        assert (again["status"], again["error"]) == (507, "insufficient_storage"), again
        assert "nothing was written" in again["message"]
        return
    raise AssertionError("200 writes to a full disk were all acknowledged")


async def scenario(cluster: LocalCluster, fill: Fill) -> None:
    lay = await layout(cluster)
    keys = lay.keys("k", 3)
    direct = lay.keys("direct", 2)
    workload = Workload(cluster.endpoints, keys, clients=3)
    workload.start()
    async with aiohttp.ClientSession() as http:
        allowed: dict[str, set[str]] = {}
        async with Client(cluster.endpoints, timeout=5.0, attempts=20) as client:
            for key in direct:
                await client.put(key, b"before")
                allowed[key] = {"before"}
        await no_space_left(cluster, lay, http, direct, allowed, fill)
        await low_space(cluster, lay, http, direct, allowed, fill)
    await asyncio.sleep(1.0)
    await workload.stop()
    log(f"workload: {dict(workload.served)} errors {dict(workload.errors)}")
    await check_end_state(cluster, keys, workload.history)
    async with Client(cluster.endpoints, timeout=5.0, attempts=20) as client:
        for key, values in allowed.items():
            got = await client.get(key)
            assert got.value is not None and got.value.decode() in values, (key, got.value)


async def no_space_left(
    cluster: LocalCluster,
    lay: Layout,
    http: aiohttp.ClientSession,
    direct: list[str],
    allowed: dict[str, set[str]],
    fill: Fill,
) -> None:
    """Not one byte left: a write the node leads is refused with 507 (never a timeout),
    its groups stall, the other nodes elect leaders, it serves what it has applied, and
    it resumes by itself once space returns."""
    api = cluster.node(FULL).api
    await lead_everything_from(cluster, lay, FULL)
    ballast = fill(cluster.node_dir(FULL))
    log("disk of node 3 filled")
    t0 = time.monotonic()
    await refused_writes(http, api, direct, allowed)
    log(f"first 507 {time.monotonic() - t0:.2f}s after the disk filled")
    ready = await until("readyz reports the full disk", lambda: _not_ready(http, api), 10.0)
    assert any("disk full" in p for p in ready["problems"]), ready
    st = await get_json(http, f"{api}/v1/status")
    assert st is not None and st["disk"]["full"] and st["disk"]["stalled"], st
    # Its frozen cores claim no leadership they may have lost meanwhile.
    assert all(g["role"] != "leader" for g in st["groups"].values()), st
    await until(
        "every shard led by a node with disk space",
        lambda: _led_elsewhere(cluster, lay),
        timeout=30.0,
    )
    log(f"every shard led elsewhere {time.monotonic() - t0:.2f}s after the disk filled")
    # Safe reads are still served by the full node: the state it has applied.
    async with http.get(f"{api}/v1/kv/{direct[0]}", params={"consistency": "eventual"}) as r:
        assert r.status == 200, await r.text()
    ballast.unlink()
    t1 = time.monotonic()
    await until("node 3 recovers by itself", lambda: _ready(http, api), timeout=30.0)
    log(f"node 3 ready {time.monotonic() - t1:.2f}s after space was freed")
    st = await get_json(http, f"{api}/v1/status")
    assert st is not None and st["disk"]["full"] is False, st


async def low_space(
    cluster: LocalCluster,
    lay: Layout,
    http: aiohttp.ClientSession,
    direct: list[str],
    allowed: dict[str, set[str]],
    fill: Fill,
) -> None:
    """Node FULL restarted with a reserve: below it, writes still fit, yet they are not
    taken (507, or a redirect once the shard is handed off, never a timeout), and every
    leadership is handed off by transfer while nothing stalls."""
    api = cluster.node(FULL).api
    cluster.stop_node(FULL)
    # Inherited by node FULL alone (the fixture's monkeypatch unsets it afterwards).
    os.environ["SHARDSET_MIN_FREE_MB"] = str(MIN_FREE_MB)
    cluster.start_node(FULL)
    await asyncio.to_thread(cluster.wait_ready, 60.0)
    await lead_everything_from(cluster, lay, FULL)
    ballast = fill(cluster.node_dir(FULL), leave=(MIN_FREE_MB << 20) // 2)
    log("free space of node 3 below its reserve")
    t0 = time.monotonic()
    await until("readyz reports the disk", lambda: _not_ready(http, api), timeout=10.0)
    await until(
        "every shard handed to a node with disk space",
        lambda: _led_elsewhere(cluster, lay),
        timeout=30.0,
    )
    log(f"every shard handed off {time.monotonic() - t0:.2f}s after the reserve was crossed")
    for i, key in enumerate(direct):
        answer = await put(http, api, key, f"low-{i}")
        assert answer["status"] in {307, 507}, answer
        assert answer["status"] == 307 or "nothing was written" in answer["message"], answer
    st = await get_json(http, f"{api}/v1/status")
    assert st is not None and st["disk"]["full"] is True, st
    assert st["disk"]["stalled"] is False, st  # handed off while it could, not timed out
    ballast.unlink()
    await until("node 3 takes writes again", lambda: _ready(http, api), timeout=30.0)


async def _stalled(http: aiohttp.ClientSession, api: str) -> bool:
    st = await get_json(http, f"{api}/v1/status")
    return st is not None and st["disk"]["stalled"] is True


async def _not_ready(http: aiohttp.ClientSession, api: str) -> dict[str, Any] | None:
    async with http.get(f"{api}/readyz") as r:
        body: dict[str, Any] = await r.json()
        return body if r.status == 503 and "disk full" in " ".join(body["problems"]) else None


async def _ready(http: aiohttp.ClientSession, api: str) -> bool:
    async with http.get(f"{api}/readyz") as r:
        return r.status == 200


async def _led_elsewhere(cluster: LocalCluster, lay: Layout) -> bool:
    leaders = await shard_leaders(cluster, [n for n in cluster.node_ids if n != FULL])
    return set(leaders) == set(lay.shards)


def test_full_disk_refuses_writes_moves_leaders_and_recovers(
    small_disk_cluster: LocalCluster, fill_disk: Fill
) -> None:
    asyncio.run(asyncio.wait_for(scenario(small_disk_cluster, fill_disk), TIMEOUT))
