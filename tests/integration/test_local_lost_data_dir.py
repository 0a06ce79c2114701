"""`shardset local up` after a node's data directory was deleted by hand (issue 15): the
store has started once, so `local up` keeps the store-created marker and the node
rejoins empty (origin "rejoin", in no group, voting in none) instead of bootstrapping
from bootstrap.json with an empty log that would count as a voter's. `local up` says
so and names `shardset local rebuild-node`, which gives the replicas back; nothing
acknowledged is lost."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

import aiohttp
from test_cli_errors import shardset

from shardset.client import Client
from shardset.local import STORE_CREATED, LocalCluster

KEYS = {f"key-{i}": f"value-{i}".encode() for i in range(24)}


async def _put_all(cluster: LocalCluster) -> None:
    async with Client(cluster.endpoints) as client:
        for key, value in KEYS.items():
            await client.put(key, value)


async def _status(cluster: LocalCluster, node: int) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(cluster.node(node).api + "/v1/status") as resp,
    ):
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def _read_all(cluster: LocalCluster, replica: int | None = None) -> dict[str, bytes | None]:
    found: dict[str, bytes | None] = {}
    async with Client(cluster.endpoints) as client:
        for key in KEYS:
            if replica is None:
                found[key] = (await client.get(key, consistency="linearizable")).value
            else:
                r = await client.get(key, consistency="eventual", replica=replica)
                found[key] = r.value if r.replica == replica else None
    return found


def test_a_deleted_node_directory_rejoins_empty_and_is_rebuilt(
    cluster_factory: Any, tmp_path: Path
) -> None:
    cluster = cluster_factory()
    assert (cluster.data_dir / STORE_CREATED).exists()  # written once the store started
    asyncio.run(_put_all(cluster))
    before = asyncio.run(_status(cluster, 2))
    assert before["origin"] == "bootstrap" and before["groups"]
    cluster.shutdown()
    shutil.rmtree(cluster.node_dir(2))

    env = {"SHARDSET_CACHE": str(tmp_path / "cache")}
    data = str(cluster.data_dir)
    rc, _, err = shardset("local", "up", "--data-dir", data, env=env)
    cluster.nodes = LocalCluster.load(cluster.data_dir).nodes  # their pids, for teardown
    assert rc == 0, err
    assert "Traceback" not in err, err
    assert "node 2 started without its Raft log" in err, err
    assert "shardset local rebuild-node 2" in err, err

    # It must not vote with its empty log: it hosts no group at all.
    st = asyncio.run(_status(cluster, 2))
    assert st["origin"] == "rejoin" and st["groups"] == {}, st
    # The other two replicas of every shard are a majority: everything is still there.
    assert asyncio.run(_read_all(cluster)) == KEYS

    rc, _, err = shardset("local", "rebuild-node", "2", "--data-dir", data, env=env)
    cluster.nodes = LocalCluster.load(cluster.data_dir).nodes
    assert rc == 0, err
    assert "node 2 rebuilt" in err, err
    after = asyncio.run(_status(cluster, 2))
    assert sorted(after["groups"]) == sorted(before["groups"]), (before, after)
    for name, group in after["groups"].items():
        assert 2 in group["voters"], (name, group)
    deadline = time.monotonic() + 60.0
    while True:
        served = asyncio.run(_read_all(cluster, replica=2))
        if served == KEYS or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert served == KEYS, {k: v for k, v in served.items() if v != KEYS[k]}
