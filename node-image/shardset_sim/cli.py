"""`python -m shardset_sim run --seeds A:B`: run seeded schedules, print one summary line."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from multiprocessing import Pool

from shardset_raft import Raft
from shardset_sim.mutants import MUTANTS
from shardset_sim.simulator import SimResult, run_seed, shrink


def _parse_range(text: str) -> range:
    try:
        a, _, b = text.partition(":")
        return range(int(a), int(b)) if b else range(int(a), int(a) + 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds wants A:B (integers), got {text!r}") from None


def _raft_class(mutant: str | None) -> type[Raft]:
    return MUTANTS[mutant] if mutant else Raft


def _run_one(args: tuple[int, str | None]) -> SimResult:
    seed, mutant = args
    return run_seed(seed, raft_class=_raft_class(mutant))


def run_range(seeds: range, jobs: int, mutant: str | None = None) -> Iterator[SimResult]:
    work = [(s, mutant) for s in seeds]
    if jobs <= 1:
        yield from map(_run_one, work)
        return
    with Pool(jobs) as pool:
        yield from pool.imap_unordered(_run_one, work, chunksize=16)


def _repro(seed: int, mutant: str | None) -> str:
    flag = f" --mutant {mutant}" if mutant else ""
    ticks = shrink(seed, _raft_class(mutant))
    return f"python -m shardset_sim repro --seed {seed} --ticks {ticks}{flag}"


def cmd_run(ns: argparse.Namespace) -> int:
    started = time.monotonic()
    totals = {
        "seeds": 0,
        "steps": 0,
        "violations": 0,
        "histories": 0,
        "non-linearizable": 0,
        "ops": 0,
        "unknown": 0,
    }
    failures: list[SimResult] = []
    for r in run_range(ns.seeds, ns.jobs, ns.mutant):
        totals["seeds"] += 1
        totals["steps"] += r.steps
        totals["histories"] += 1
        totals["ops"] += r.ops
        totals["unknown"] += int(r.lin_unknown)
        if not r.linearizable:
            totals["non-linearizable"] += 1
        if r.violation is not None:
            totals["violations"] += 1
            failures.append(r)
        if ns.progress and totals["seeds"] % ns.progress == 0:
            print(
                f"progress seeds={totals['seeds']}/{len(ns.seeds)} "
                f"violations={totals['violations']}",
                file=sys.stderr,
                flush=True,
            )
    failures.sort(key=lambda r: r.seed)
    for r in failures[: ns.show]:
        print(f"FAIL seed={r.seed} {r.violation}")
        print(f"  reproduce: {_repro(r.seed, ns.mutant)}")
    elapsed = time.monotonic() - started
    fields = " ".join(f"{k}={v}" for k, v in totals.items())
    print(f"{fields} seconds={elapsed:.1f}")
    return 1 if totals["violations"] else 0


def cmd_repro(ns: argparse.Namespace) -> int:
    r = run_seed(ns.seed, raft_class=_raft_class(ns.mutant), trace=True, ticks=ns.ticks)
    for line in r.events:
        print(line)
    print(
        f"seed={r.seed} steps={r.steps} ops={r.ops} elections={r.elections} "
        f"committed={r.committed} violation={r.violation or 'none'}"
    )
    return 0 if r.ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="shardset-sim", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run a range of seeds")
    run.add_argument("--seeds", type=_parse_range, default=range(0, 1000))
    run.add_argument("--jobs", type=int, default=1)
    run.add_argument("--mutant", choices=sorted(MUTANTS))
    run.add_argument("--show", type=int, default=5, help="failing seeds to print")
    run.add_argument("--progress", type=int, default=0, help="report every N seeds")
    run.set_defaults(func=cmd_run)
    rep = sub.add_parser("repro", help="replay one seed with a trace")
    rep.add_argument("--seed", type=int, required=True)
    rep.add_argument("--ticks", type=int)
    rep.add_argument("--mutant", choices=sorted(MUTANTS))
    rep.set_defaults(func=cmd_repro)
    ns = p.parse_args(argv)
    return int(ns.func(ns))


if __name__ == "__main__":
    sys.exit(main())
