"""Issue 15, with real node processes: a damaged WAL tail plus one more fault.

Leader L of a shard commits writes with follower A while B is cut off; A is killed
and the last 512-byte sector of its WAL is zeroed (the disk lost synced, acknowledged
records); L is killed; A restarts (it cuts the tail, `wal_torn_tail_truncated`), the
partition heals. Before, A voted for B, whose log lacks the writes: B led and the
acknowledged writes were gone. Now A abstains until caught up (`raft_log_recovering`),
so the shard waits for L, and every acknowledged write reads back.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from clusterkit import layout, log, stable_leaders

from shardset.client import Client

SCENARIO_TIMEOUT = 120.0
SECTOR = 512


def _events(logfile: Path, offset: int, name: str) -> list[dict[str, Any]]:
    with logfile.open("rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").splitlines()
    found = []
    for line in lines:
        if f'"{name}"' in line:
            event = json.loads(line)
            if event.get("event") == name:
                found.append(event)
    return found


def _zero_last_sector(wal_dir: Path) -> Path:
    segment = [p for p in sorted(wal_dir.glob("wal-*.log")) if p.stat().st_size][-1]
    size = segment.stat().st_size
    with segment.open("r+b") as f:
        f.seek(max(0, size - SECTOR))
        f.write(bytes(min(SECTOR, size)))
    return segment


def test_a_damaged_wal_tail_plus_a_crash_loses_no_acknowledged_write(
    cluster_factory: Any,
) -> None:
    cluster = cluster_factory(fault_proxies=True)

    async def scenario() -> None:
        lay = await layout(cluster)
        leaders = await stable_leaders(cluster, lay.shards)
        shard = lay.shards[0]
        lead = leaders[shard]
        a, b = [n for n in cluster.node_ids if n != lead]
        keys = [k for k in lay.keys("lost", per_shard=2) if lay.shard_of(k) == shard]
        cluster.partition([b], [lead, a])
        acked: dict[str, bytes] = {}
        async with Client([cluster.nodes[cluster.node_ids.index(lead)].api]) as c:
            for i, key in enumerate(keys):
                value = f"acked-{i}".encode()
                await c.put(key, value)
                acked[key] = value
        cluster.stop_node(a, kill=True)
        segment = _zero_last_sector(cluster.node_dir(a) / "raft" / "wal")
        log(f"node {a}: zeroed the last sector of {segment.name}; shard {shard} led by {lead}")
        cluster.stop_node(lead, kill=True)
        offset = cluster.log_path(a).stat().st_size
        cluster.start_node(a)
        cluster.heal()
        await asyncio.sleep(4.0)  # B's chance to be elected with A's vote (it once was)
        assert _events(cluster.log_path(a), offset, "wal_torn_tail_truncated")
        assert _events(cluster.log_path(a), offset, "raft_log_recovering")
        cluster.start_node(lead)
        await stable_leaders(cluster, lay.shards, timeout=40.0)
        async with Client(cluster.endpoints) as c:
            for key, value in acked.items():
                got = await c.get(key, consistency="linearizable")
                assert got.value == value, f"acknowledged {key}={value!r} lost: {got}"

    asyncio.run(asyncio.wait_for(scenario(), SCENARIO_TIMEOUT))
