"""Read latency and throughput per consistency mode on a local multi-process cluster.

Starts `shardset local up`'s cluster (3 nodes, 4 shards, 3 replicas, fsync on) in a
temporary directory, writes a set of keys, then for each mode runs concurrent readers
(one Client, so one session, each) on random keys for a fixed time, capped in count.
The modes take turns, `--rounds` times, so a change in the machine's load during the run
falls on every mode alike. Prints a Markdown table and writes the JSON results. Bounded
in time: about `--rounds` x 5 modes x `--seconds`, plus start-up (about a minute with
the defaults).

The readers run in this one Python process, so on a small machine the client side is
part of what is measured; compare the modes with each other, not with other stores.

Run: ``nice .venv/bin/python bench/read_modes.py [--seconds 2] [--rounds 4]
[--readers 16] [--out bench/read_modes.json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shardset import local
from shardset.client import Client, ShardsetError
from shardset_proto.consistency import MODES

KEYS = 64
MAX_READS_PER_MODE = 50_000
BOUND_MS = 500


async def _preload(endpoints: list[str]) -> list[str]:
    keys = [f"bench-{i}" for i in range(KEYS)]
    async with Client(endpoints) as c:
        for key in keys:
            await c.put(key, b"x" * 100)
    return keys


@dataclass
class _Sample:
    latencies: list[float] = field(default_factory=list)
    by_replica: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    seconds: float = 0.0


async def _measure(
    endpoints: list[str], keys: list[str], mode: str, readers: int, seconds: float, into: _Sample
) -> None:
    latencies: list[float] = []
    by_replica = into.by_replica
    errors = 0
    stop_at = time.monotonic() + seconds

    async def reader(seed: int) -> None:
        nonlocal errors
        rng = random.Random(seed)
        async with Client(endpoints, timeout=5.0) as c:
            await c.get(keys[0], consistency="linearizable")  # learn the map and leaders
            while time.monotonic() < stop_at and len(latencies) < MAX_READS_PER_MODE:
                started = time.perf_counter()
                try:
                    r = await c.get(
                        rng.choice(keys),
                        consistency=mode,
                        max_staleness_ms=BOUND_MS if mode == "bounded" else None,
                    )
                except ShardsetError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)
                by_replica[r.replica] = by_replica.get(r.replica, 0) + 1

    began = time.monotonic()
    await asyncio.gather(*(reader(i) for i in range(readers)))
    into.seconds += time.monotonic() - began
    into.latencies.extend(latencies)
    into.errors += errors


def _summary(mode: str, sample: _Sample) -> dict[str, Any]:
    ms = sorted(x * 1000 for x in sample.latencies)
    return {
        "mode": mode,
        "reads": len(ms),
        "errors": sample.errors,
        "seconds": round(sample.seconds, 2),
        "reads_per_s": round(len(ms) / sample.seconds, 1),
        "p50_ms": round(statistics.median(ms), 2) if ms else None,
        "p99_ms": round(ms[max(0, int(len(ms) * 0.99) - 1)], 2) if ms else None,
        "mean_ms": round(statistics.fmean(ms), 2) if ms else None,
        "served_by": {str(k): v for k, v in sorted(sample.by_replica.items())},
    }


async def _leaders(endpoints: list[str]) -> dict[int, int]:
    async with Client(endpoints) as c:
        status = await c.status()
    leaders: dict[int, int] = {}
    for view in status["nodes"].values():
        for group, g in view.get("groups", {}).items():
            if group != "meta" and g["role"] == "leader":
                leaders[int(group)] = int(view["node"])
    return leaders


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| mode | reads/s | p50 ms | p99 ms | mean ms | reads | served by node |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        served = ", ".join(f"{n}: {c}" for n, c in r["served_by"].items())
        lines.append(
            f"| {r['mode']} | {r['reads_per_s']} | {r['p50_ms']} | {r['p99_ms']} | "
            f"{r['mean_ms']} | {r['reads']} | {served} |"
        )
    return "\n".join(lines)


async def bench(endpoints: list[str], readers: int, seconds: float, rounds: int) -> dict[str, Any]:
    keys = await _preload(endpoints)
    samples = {m: _Sample() for m in MODES}
    for _ in range(rounds):
        for m in MODES:
            await _measure(endpoints, keys, m, readers, seconds, samples[m])
    results = [_summary(m, samples[m]) for m in MODES]
    return {
        "cluster": {"nodes": 3, "shards": 4, "replication": 3, "fsync": True},
        "readers": readers,
        "rounds": rounds,
        "seconds_per_mode_and_round": seconds,
        "bounded_max_staleness_ms": BOUND_MS,
        "keys": KEYS,
        "leaders": {str(k): v for k, v in sorted((await _leaders(endpoints)).items())},
        "results": results,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=2.0, help="per mode and round (default 2)")
    p.add_argument("--rounds", type=int, default=4, help="turns of every mode (default 4)")
    p.add_argument("--readers", type=int, default=16, help="concurrent readers (default 16)")
    p.add_argument("--out", type=Path, default=Path("bench/read_modes.json"))
    ns = p.parse_args()
    if not 0 < ns.seconds <= 60 or not 0 < ns.readers <= 256 or not 0 < ns.rounds <= 20:
        raise SystemExit("want --seconds in (0, 60], --readers in (0, 256], --rounds in (0, 20]")
    with tempfile.TemporaryDirectory(prefix="shardset-bench-") as tmp:
        cluster = local.up(Path(tmp), 3, 4, 3, remember=False, stop_on_failure=True)
        try:
            report = asyncio.run(bench(cluster.endpoints, ns.readers, ns.seconds, ns.rounds))
        finally:
            cluster.shutdown(kill=True)
    ns.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report["results"]))
    print(f"\nJSON: {ns.out}")


if __name__ == "__main__":
    main()
