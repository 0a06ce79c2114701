"""An online shard split on a real 3-node cluster, with writers running throughout."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path

from shardset import local
from shardset.client import Client, ShardsetError
from shardset_sim.linearizability import Op, check_kv


def _post(url: str, body: dict[str, object]) -> dict[str, object]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        return dict(json.loads(resp.read()))


def _map(cluster: local.LocalCluster) -> dict[str, object]:
    with urllib.request.urlopen(cluster.endpoints[0] + "/v1/shardmap", timeout=10) as resp:
        return dict(json.loads(resp.read()))


async def _workload(cluster: local.LocalCluster, stop: asyncio.Event, history: list[Op]) -> None:
    async def client_loop(cid: int) -> None:
        async with Client(cluster.endpoints, timeout=5) as c:
            n = 0
            while not stop.is_set():
                key, n = f"k{(cid * 7 + n) % 40}", n + 1
                t0 = time.monotonic()
                try:
                    if n % 2:
                        value = f"c{cid}-{n}"
                        await c.put(key, value.encode())
                        history.append(Op(cid, "put", key, value, None, t0, time.monotonic()))
                    else:
                        r = await c.get(key)
                        got = None if r.value is None else r.value.decode()
                        history.append(Op(cid, "get", key, None, None, t0, time.monotonic(), got))
                except ShardsetError:
                    if n % 2:  # a write that failed may still have been applied
                        history.append(Op(cid, "put", key, value, None, t0, None))

    await asyncio.gather(*(client_loop(i) for i in range(4)))


def test_split_moves_slots_online_without_losing_or_reordering(tmp_path: Path) -> None:
    cluster = local.up(tmp_path / "c", nodes=3, shards=2, replication=3)
    try:
        before = _map(cluster)
        leader = int(before["leaders"]["1"])  # type: ignore[index]
        history: list[Op] = []

        async def run() -> dict[str, object]:
            stop = asyncio.Event()
            work = asyncio.create_task(_workload(cluster, stop, history))
            await asyncio.sleep(1.0)
            split = {"shard": 1, "new_shard": 3, "start": 4096, "end": 8192}
            url = cluster.node(leader).api + "/v1/admin/split-shard"
            result = await asyncio.to_thread(_post, url, split)
            again = await asyncio.to_thread(_post, url, split)  # idempotent: a retry is harmless
            await asyncio.sleep(1.0)
            stop.set()
            await work
            assert again["epoch"] == result["epoch"]
            return result

        result = asyncio.run(run())
        after = _map(cluster)
        assert after["slots"] == [[0, 4096, 1], [4096, 8192, 3], [8192, 16384, 2]]
        assert int(after["epoch"]) == int(before["epoch"]) + 1 == result["epoch"]
        assert sum(1 for op in history if op.complete is not None) > 20
        verdict = check_kv(history)
        assert verdict.ok, verdict.explanation
    finally:
        local.down(tmp_path / "c")
