"""Revocation latency (issue 16): how long after `delete-user` returns (on the metadata
leader) every node of a local 3-node store no longer has the user in its table, the one
its front ends authenticate requests against. Observed through each node's
`shardset_users` gauge, every node scraped concurrently and as fast as it answers (the
scrape itself adds a few milliseconds). Run:
``.venv/bin/python -m bench.revocation [--rounds N]``.

Figures from this machine are in the sec-users report (docs/security.md).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from shardset.local import LocalCluster, up

_GAUGE = re.compile(r"^shardset_users (\S+)$", re.M)


async def _count(session: aiohttp.ClientSession, api: str) -> int:
    async with session.get(f"{api}/metrics") as r:
        found = _GAUGE.search(await r.text())
    assert found is not None, f"{api}: no shardset_users gauge"
    return int(float(found.group(1)))


async def _until(session: aiohttp.ClientSession, api: str, want: int, t0: float) -> float:
    """Seconds after t0 at which the node at `api` reported `want` users."""
    for _ in range(100_000):
        if await _count(session, api) == want:
            return time.perf_counter() - t0
    raise AssertionError(f"{api} never reported {want} users")


async def _admin(session: aiohttp.ClientSession, url: str, action: str, body: Any) -> str:
    """POST to the metadata leader (following its redirect); the leader's URL."""
    for _ in range(50):
        async with session.post(f"{url}/v1/admin/{action}", json=body) as r:
            answer = await r.json()
        if r.status == 200:
            return url
        if r.status == 307:
            url = answer["leader_url"]
            continue
        await asyncio.sleep(0.2)
    raise AssertionError(f"{action} kept failing: {answer}")


async def _measure(cluster: LocalCluster, rounds: int) -> list[tuple[float, float]]:
    """Per round: (the delete's own time, then the last node's lag after it returned)."""
    apis = [cluster.node(n).api for n in cluster.node_ids]
    out = []
    async with aiohttp.ClientSession() as session:
        leader = await _admin(session, apis[0], "put-user", {"name": "warm", "role": "read"})
        for i in range(rounds):
            name = f"user-{i}"
            await _admin(session, leader, "put-user", {"name": name, "role": "read"})
            await asyncio.gather(*(_until(session, a, 2, time.perf_counter()) for a in apis))
            t_sent = time.perf_counter()
            await _admin(session, leader, "delete-user", {"name": name})
            t_done = time.perf_counter()
            lags = await asyncio.gather(*(_until(session, a, 1, t_done) for a in apis))
            out.append((t_done - t_sent, max(lags)))
    return out


def _ms(values: list[float], q: float) -> float:
    return 1000 * statistics.quantiles(values, n=100)[int(q) - 1] if q < 100 else 1000 * max(values)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=50)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="revocation-") as tmp:
        cluster = up(Path(tmp) / "store", 3, 3, 3, remember=False, stop_on_failure=True)
        try:
            results = asyncio.run(_measure(cluster, args.rounds))
        finally:
            cluster.shutdown(kill=True)
    deletes = [d for d, _ in results]
    lags = [lag for _, lag in results]
    totals = [d + lag for d, lag in results]
    print(f"rounds={len(results)} (3 nodes, fsync on)")
    for label, values in (
        ("delete-user call", deletes),
        ("last node after it returned", lags),
        ("sent -> revoked everywhere", totals),
    ):
        print(
            f"{label:30s} p50={_ms(values, 50):7.1f} ms  p99={_ms(values, 99):7.1f} ms  "
            f"max={_ms(values, 100):7.1f} ms"
        )


if __name__ == "__main__":
    main()
