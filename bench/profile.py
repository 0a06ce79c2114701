"""Where a Shardset node spends its time under one benchmark point: py-spy on every node.

Starts the local cluster (3 nodes, `--shards`, fsync on), runs one point with the
benchmark's load generator while `py-spy record` samples each node process, and prints
the functions with the most samples (own time and inclusive), summed over the nodes.
Raw collapsed stacks are kept in bench/.work/profile-*.txt.

Run: ``nice -n 10 .venv/bin/python -m bench.profile [--clients 1] [--seconds 6]``.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.loadgen import Job, LoadGen, split
from bench.systems import REPO, Shardset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--op", default="put", choices=["put", "get_lin"])
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--top", type=int, default=25)
    ns = p.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    base = REPO / "bench" / ".work"
    base.mkdir(parents=True, exist_ok=True)
    lg = LoadGen(4)
    s = Shardset(base, shards=ns.shards)
    try:
        keys: list[str] = []
        if ns.op != "put":
            t = time.time() + 0.2
            jobs = [
                Job("shardset", s.endpoints, i, c, "put", t, 0.0, 0.0, "pre", count=250)
                for i, c in enumerate(split(16, 4))
            ]
            keys = [k for r in lg.run(jobs) for k in r.acked]
        outs = []
        spies = []
        for i, pid in enumerate(s.pids):
            out = base / f"profile-{ns.op}-{ns.clients}-node{i + 1}.txt"
            outs.append(out)
            spies.append(
                subprocess.Popen(
                    [
                        spy,
                        "record",
                        "-p",
                        str(pid),
                        "-d",
                        str(int(ns.seconds)),
                        "-r",
                        "200",
                        "-f",
                        "raw",
                        "-o",
                        str(out),
                        "--nonblocking",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        t = time.time() + 0.5
        jobs = [
            Job("shardset", s.endpoints, i, c, ns.op, t, 0.0, ns.seconds, "prf", read_keys=keys)
            for i, c in enumerate(split(ns.clients, 4))
        ]
        res = lg.run(jobs)
        for sp in spies:
            sp.wait(60)
        ops = sum(len(r.latencies) for r in res)
        print(f"{ops / ns.seconds:.0f} ops/s with {ns.clients} clients ({ns.op})")
        report(outs, ns.top)
    finally:
        s.stop()
        lg.close()


def report(paths: list[Path], top: int) -> None:
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if not n.isdigit():
                continue
            count = int(n)
            frames = [f.split(" (")[0] + " " + _file(f) for f in stack.split(";")]
            total += count
            own[frames[-1]] += count
            for f in set(frames):
                incl[f] += count
    print(f"{total} samples over {len(paths)} nodes (idle included)")
    print("\nown time:")
    for f, n in own.most_common(top):
        print(f"  {100 * n / max(1, total):5.1f}%  {f}")
    print("\ninclusive:")
    for f, n in incl.most_common(top):
        print(f"  {100 * n / max(1, total):5.1f}%  {f}")


def _file(frame: str) -> str:
    if " (" not in frame:
        return ""
    loc = frame.split(" (", 1)[1].rstrip(")")
    return "(" + "/".join(loc.split("/")[-2:]) + ")"


if __name__ == "__main__":
    main()
