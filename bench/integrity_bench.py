"""The cost of issue 15's integrity checks on the node's engine (KvEngine): the
consistency checker's digest per 10,000 keys, what per-row checksums add to gets,
scans and applies, and the engine file's check at open (``PRAGMA quick_check``,
storage/enginecheck.py). Run: ``.venv/bin/python -m bench.integrity_bench [--keys N]``.

Figures from this machine are in docs/integrity.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from shardset_node.storage.enginecheck import engine_problem
from shardset_node.storage.kvengine import KvEngine
from shardset_proto.commands import Put


def _best_of(runs: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _fill(e: KvEngine, keys: int, value_bytes: int) -> float:
    value = b"v" * value_bytes
    t0 = time.perf_counter()
    for start in range(0, keys, 1000):
        cmds = [Put(f"key-{i:08d}".encode(), value) for i in range(start, min(keys, start + 1000))]
        e.apply(1, start // 1000 + 1, cmds)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--value-bytes", type=int, default=100)
    p.add_argument("--runs", type=int, default=5)
    ns = p.parse_args()
    per = 10_000 / ns.keys
    with tempfile.TemporaryDirectory() as d, KvEngine(Path(d) / "kv.sqlite3") as e:
        fill = _fill(e, ns.keys, ns.value_bytes)
        digest = _best_of(ns.runs, lambda: e.digest_at(1).compute())
        scan = _best_of(ns.runs, lambda: e.scan(1, b"", None, ns.keys))
        keys = [f"key-{i:08d}".encode() for i in range(0, ns.keys, max(1, ns.keys // 10_000))]
        gets = _best_of(ns.runs, lambda: [e.get(1, k) for k in keys]) / len(keys)
        e.sync()  # everything in the main file, as after a clean stop
        size = (Path(d) / "kv.sqlite3").stat().st_size
        check = _best_of(ns.runs, lambda: engine_problem(Path(d) / "kv.sqlite3"))
    print(f"{ns.keys} keys of {ns.value_bytes} B values (best of {ns.runs}):")
    print(f"  apply (batches of 1000 puts): {fill * per * 1000:.1f} ms per 10k keys")
    print(f"  consistency digest:           {digest * per * 1000:.1f} ms per 10k keys")
    print(f"  full scan (checked):          {scan * per * 1000:.1f} ms per 10k keys")
    print(f"  get (checked):                {gets * 1e6:.1f} us per get")
    print(f"  quick_check at open:          {check * 1000:.1f} ms ({size >> 20} MiB file, cached)")


if __name__ == "__main__":
    main()
