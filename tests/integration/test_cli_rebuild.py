"""`shardset local rebuild-node N` (issue 15, "WAL corruption in the middle of the
log"): a node whose Raft log is damaged mid-way stops and stays stopped; the command
rebuilds it empty from its peers (it rejoins, is removed from its groups and added back
as a learner, then promoted), and every acknowledged write is still there, on it too."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from test_cli_errors import assert_clean_error, shardset

from shardset.client import Client
from shardset.local import LocalCluster
from shardset.rebuild import Membership, RebuildError, remembered

KEYS = {f"key-{i}": f"value-{i}".encode() for i in range(40)}


def corrupt_mid_log(node_dir: Path) -> tuple[Path, bytes]:
    """Flip one byte inside the first record of the node's first WAL segment: intact
    records follow it, so this is not a torn tail but lost synced data."""
    segment = sorted((node_dir / "raft" / "wal").glob("wal-*.log"))[0]
    data = bytearray(segment.read_bytes())
    assert len(data) > 1024, len(data)  # many records after the damaged one
    data[10] ^= 0x01
    segment.write_bytes(bytes(data))
    return segment.relative_to(node_dir), bytes(data)


async def put_all(cluster: LocalCluster) -> None:
    async with Client(cluster.endpoints) as client:
        for key, value in KEYS.items():
            await client.put(key, value)


async def read_back(cluster: LocalCluster, replica: int) -> dict[str, bytes | None]:
    """Every key, linearizable, and as replica `replica` serves it (eventual)."""
    found: dict[str, bytes | None] = {}
    async with Client(cluster.endpoints) as client:
        for key in KEYS:
            assert (await client.get(key)).value == KEYS[key], key
            r = await client.get(key, consistency="eventual", replica=replica)
            found[key] = r.value if r.replica == replica else None
    return found


def test_rebuild_node_after_a_mid_log_wal_corruption(cluster_factory: Any, tmp_path: Path) -> None:
    cluster = cluster_factory()
    env = {"SHARDSET_CACHE": str(tmp_path / "cache")}
    asyncio.run(put_all(cluster))
    before = asyncio.run(_groups(cluster, 2))
    cluster.stop_node(2)
    segment, damaged = corrupt_mid_log(cluster.node_dir(2))
    cluster.start_node(2)
    deadline = time.monotonic() + 30.0
    while cluster.running(2) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not cluster.running(2), "a node with a log corrupt mid-way must not run"

    data = str(cluster.data_dir)
    # `local up` says at once that node 2 stopped, rather than waiting for it.
    rc, _, err = shardset("local", "up", "--data-dir", data, env=env)
    assert_clean_error(rc, err, 1, "nodes [2] exited", "node-2.log")
    rc, _, err = shardset("local", "rebuild-node", "7", "--data-dir", data, env=env)
    assert_clean_error(rc, err, 1, "no node 7", "nodes: 1, 2, 3")

    rc, _, err = shardset("local", "rebuild-node", "2", "--data-dir", data, env=env)
    cluster.nodes = LocalCluster.load(cluster.data_dir).nodes  # its new pid, for teardown
    assert rc == 0, err
    assert "Traceback" not in err and "node 2 rebuilt" in err, err
    (kept,) = cluster.data_dir.glob("node-2.corrupt-*")
    assert (kept / segment).read_bytes() == damaged  # kept as it was, for diagnosis

    after = asyncio.run(_groups(cluster, 2))
    assert after["origin"] == "rejoin", after
    assert after["groups"] == before["groups"], (before, after)  # the same groups, as voter
    deadline = time.monotonic() + 60.0
    while True:
        served = asyncio.run(read_back(cluster, 2))
        if served == KEYS or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert served == KEYS, {k: v for k, v in served.items() if v != KEYS[k]}


async def _groups(cluster: LocalCluster, node: int) -> dict[str, Any]:
    """Node `node`'s origin and, per group it hosts, whether it is a voter."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(cluster.node(node).api + "/v1/status") as resp,
    ):
        report = await resp.json()
    return {
        "origin": report["origin"],
        "groups": {g: node in v["voters"] for g, v in report["groups"].items()},
    }


def test_an_interrupted_rebuild_still_gives_every_group_back(tmp_path: Path) -> None:
    """A second run finds the node in fewer groups (the first already removed it from
    some): the groups the first run recorded are given back too."""
    path = tmp_path / "node-2.rebuild.json"
    first = remembered(path, Membership(voter_of=(0, 1, 3), learner_of=(4,)))
    assert first == Membership((0, 1, 3), (4,))
    second = remembered(path, Membership(voter_of=(3,), learner_of=()))
    assert second == first
    path.write_text("{broken")
    with pytest.raises(RebuildError, match="corrupt"):
        remembered(path, second)
