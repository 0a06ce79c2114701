"""`python -m shardset.demo`: the main job until the operator exists.

Starts a 3-node local cluster (8 shards, 3 replicas each), runs a short
workload, kills the node that leads the most shards, shows that every shard
keeps taking writes, restarts the node, prints the status, and stops the
cluster. Exits non-zero if any acknowledged write is not read back.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import Counter
from pathlib import Path

from shardset import local
from shardset.cli import fail, print_status
from shardset.cliargs import positive
from shardset.client import Client, ShardsetError


async def workload(client: Client, prefix: str, count: int, acked: dict[str, bytes]) -> float:
    """`count` puts from 16 concurrent writers; returns seconds taken."""
    started = time.monotonic()
    keys = iter(range(count))

    async def writer() -> None:
        for i in keys:
            key, value = f"{prefix}-{i}", f"value-{i}".encode()
            await client.put(key, value)
            acked[key] = value

    await asyncio.gather(*(writer() for _ in range(16)))
    return time.monotonic() - started


async def main_async(data_dir: Path, count: int) -> int:
    print(f"starting a local cluster in {data_dir} (3 nodes, 8 shards, replication 3)")
    t0 = time.monotonic()
    cluster = local.up(data_dir, nodes=3, shards=8, replication=3, stop_on_failure=True)
    print(f"  ready in {time.monotonic() - t0:.1f}s: {', '.join(cluster.endpoints)}")
    acked: dict[str, bytes] = {}
    try:
        async with Client(cluster.endpoints) as client:
            secs = await workload(client, "before", count, acked)
            print(f"wrote {count} keys in {secs:.2f}s ({count / secs:.0f} acknowledged puts/s)")
            status = await client.status()
            leaders = Counter(
                g["leader"] for view in status["nodes"].values() for g in view["groups"].values()
            )
            victim = leaders.most_common(1)[0][0]
            print(f"killing node {victim} (kill -9), the leader of most shards")
            cluster.stop_node(victim, kill=True)
            t1 = time.monotonic()
            await client.put("first-after-kill", b"x")
            acked["first-after-kill"] = b"x"
            print(f"  first acknowledged write after the kill: {time.monotonic() - t1:.2f}s")
            secs = await workload(client, "during", count, acked)
            print(f"  {count} more puts with node {victim} down took {secs:.2f}s")
            cluster.start_node(victim)
            cluster.wait_ready()
            print(f"node {victim} restarted and caught up")
            missing = [k for k, v in acked.items() if (await client.get(k)).value != v]
            print_status(await client.status())
            print(f"read back {len(acked)} acknowledged writes: {len(missing)} missing or wrong")
            return 1 if missing else 0
    except ShardsetError as e:
        print(f"demo failed: {e}")
        return 2
    finally:
        local.down(data_dir)
        print("cluster stopped (data kept in", data_dir, ")")


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m shardset.demo", description=__doc__)
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--keys", type=positive, default=500)
    ns = p.parse_args()
    data_dir = ns.data_dir or Path(tempfile.mkdtemp(prefix="shardset-demo-"))
    try:
        return asyncio.run(main_async(data_dir, ns.keys))
    except BaseException as e:  # one line, never a traceback (as the CLI)
        return fail(e)


if __name__ == "__main__":
    raise SystemExit(main())
