"""PySyncObj (from PyPI) on its own benchmark shape, for the comparison in `make bench`.

The shape of PySyncObj's own benchmarks: three node processes on 127.0.0.1, a replicated
object, and the requests issued inside the node processes themselves (no client hop):
each node sends calls of a `@replicated` method at a fixed rate, and the throughput is the
rate of calls whose callback reports success; the result is the best throughput at an
offered rate where at least 90% of the calls succeed (its benchmark's criterion). Here
the object is a dict and the call `set(key, value)` with 8-byte keys and 256-byte values,
like the Shardset and etcd points.

Durability, stated beside Shardset's (which fdatasyncs its WAL on a majority before
acknowledging): PySyncObj's default journal is in memory (nothing on disk); with
`journalFile` it appends to an mmap'ed file and never fsyncs or msyncs while running
(the strace below counts the calls), so neither setting survives a power loss the way
Shardset and etcd do. Both are measured.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench import stats
from bench.loadgen import make_key, value_of
from bench.systems import free_ports

RATES = [1500, 3000, 6000, 12000]  # offered calls per second, all three nodes together
BURST_S = 0.1
GRACE_S = 1.5
MEASURE_S = 3.0  # per point (each point starts a fresh cluster)


def _node(conn: Connection, me: str, partners: list[str], journal: str | None, idx: int) -> None:
    from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated

    class Dict(SyncObj):  # type: ignore[misc]
        def __init__(self) -> None:
            conf = SyncObjConf(journalFile=journal, dynamicMembershipChange=False)
            super().__init__(me, partners, conf)
            self.data: dict[str, bytes] = {}

        @replicated  # type: ignore[misc]
        def set(self, key: str, value: bytes) -> None:
            self.data[key] = value

    o = Dict()
    deadline = time.time() + 30
    while o._getLeader() is None and time.time() < deadline:
        time.sleep(0.05)
    conn.send("ready")
    while True:
        job = conn.recv()
        if job is None:
            o.destroy()
            return
        start_at, warmup, measure, rate, tag = job
        tally = _Tally(start_at + warmup, start_at + warmup + measure)
        counter = 0

        # PySyncObj's benchmark sends its per-second quota in one burst each second; the
        # quota is sent here in bursts every 100 ms (the same rate, smoother).
        per_burst = max(1, round(rate * BURST_S))
        tick = start_at
        while tick < tally.m_end:
            time.sleep(max(0.0, tick - time.time()))
            for _ in range(per_burst):
                counter += 1
                key = make_key(tag, idx, counter)
                o.set(key, value_of(key), callback=tally.callback(tick, FAIL_REASON.SUCCESS))
            tick += BURST_S
        time.sleep(GRACE_S)  # answers still on their way count, if sent in the window
        conn.send(tally.result())


class _Tally:
    """One point's counts on one node; callbacks arrive on PySyncObj's thread."""

    def __init__(self, m_start: float, m_end: float) -> None:
        self.m_start, self.m_end = m_start, m_end
        self.lat: list[float] = []
        self.errors = 0
        self.sent = 0
        self.lock = threading.Lock()

    def callback(self, scheduled: float, success: object) -> Callable[[object, object], None]:
        measured = self.m_start <= scheduled < self.m_end
        if measured:
            self.sent += 1
        sent = time.time()

        def cb(result: object, error: object) -> None:
            if not measured:
                return
            now = time.time()
            with self.lock:
                if error == success:
                    self.lat.append(now - sent)
                else:
                    self.errors += 1

        return cb

    def result(self) -> dict[str, Any]:
        with self.lock:
            return {"latencies": list(self.lat), "errors": self.errors, "sent": self.sent}


def _point(
    conns: list[Connection], rate: int, warmup: float, measure: float, tag: str
) -> dict[str, Any]:
    """Every node offers rate/3 calls per second; ops/s counts the successful ones."""
    start_at = time.time() + 0.3
    for c in conns:
        c.send((start_at, warmup, measure, rate / len(conns), tag))
    res = [c.recv() for c in conns]
    lat = [x for r in res for x in r["latencies"]]
    sent = sum(r["sent"] for r in res)
    return {
        "offered_per_s": rate,
        "ops_per_s": round(len(lat) / measure, 1),
        "succeeded": round(len(lat) / max(1, sent), 3),
        **stats.latency_summary(lat),
        "errors": sum(r["errors"] for r in res),
        "ops": len(lat),
    }


def _cluster(base: Path, journal: bool) -> tuple[list[Any], list[Connection]]:
    ctx = mp.get_context("spawn")
    ports = free_ports(3)
    addrs = [f"127.0.0.1:{p}" for p in ports]
    d = base / "pysyncobj"
    d.mkdir(parents=True, exist_ok=True)
    procs, conns = [], []
    for i, me in enumerate(addrs):
        jf = str(d / f"journal-{i}-{time.time_ns()}.bin") if journal else None
        parent, child = ctx.Pipe()
        pr = ctx.Process(
            target=_node, args=(child, me, [a for a in addrs if a != me], jf, i), daemon=True
        )
        pr.start()
        procs.append(pr)
        conns.append(parent)
    for c in conns:
        if not c.poll(40):
            raise RuntimeError("PySyncObj node not ready in 40 s")
        c.recv()
    return procs, conns


def _stop(procs: list[Any], conns: list[Connection]) -> None:
    for c in conns:
        with contextlib.suppress(OSError):
            c.send(None)
    for pr in procs:
        pr.join(5)
        if pr.is_alive():
            pr.kill()


def run(base: Path, ns: Any, say: Callable[[str], None]) -> dict[str, Any]:
    rates = list(getattr(ns, "pysyncobj_rates", RATES))
    out: dict[str, Any] = {"shape": __doc__.split("\n\n")[1].replace("\n", " ")}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    measure = min(ns.measure, MEASURE_S)
    # An overloaded PySyncObj cluster does not recover (its queues stay full and its
    # leader starves), so each point gets a fresh cluster, the rates go up within a
    # repetition, and a repetition stops at the first rate below 90% success.
    for rep in range(ns.reps):
        for journal in (False, True) if rep % 2 == 0 else (True, False):
            name = "file_journal" if journal else "memory_journal"
            for i, rate in enumerate(rates):
                procs, conns = _cluster(base, journal)
                try:
                    time.sleep(0.5)
                    tag = f"{'f' if journal else 'm'}{rep}{i}"
                    r = _point(conns, rate, ns.warmup, measure, tag)
                finally:
                    _stop(procs, conns)
                runs.setdefault(name, {}).setdefault(str(rate), []).append(r)
                say(
                    f"pysyncobj rep {rep} {name} offered {rate}/s: {r['ops_per_s']} ops/s "
                    f"({r['succeeded']:.0%} of sent) p99 {r['p99_ms']}"
                )
                if r["succeeded"] < 0.9:
                    break
    procs, conns = _cluster(base, True)
    try:
        time.sleep(0.5)
        out["strace"] = _strace(conns, [int(p.pid) for p in procs], base)
        say(f"pysyncobj strace: {out['strace']}")
    finally:
        _stop(procs, conns)
    out["runs"] = {
        name: {w: stats.combine_reps(reps) for w, reps in by_w.items()}
        for name, by_w in runs.items()
    }
    # Its own criterion: the best rate at which at least 90% of the calls succeeded.
    best = {
        name: max(
            [
                v["ops_per_s"] or 0.0
                for v in by_w.values()
                if statistics.median(r["succeeded"] for r in v["reps"]) >= 0.9
            ]
            or [0.0]
        )
        for name, by_w in out["runs"].items()
    }
    out["best_ops_per_s"] = best
    out["pysyncobj_ops_per_s"] = max(best.values())
    out["durability"] = {
        "pysyncobj_memory_journal": "no disk at all",
        "pysyncobj_file_journal": "mmap'ed journal, no fsync/msync per write (see strace)",
        "shardset": "WAL fdatasync on a majority before acknowledging",
    }
    return out


def _strace(conns: list[Connection], pids: list[int], base: Path) -> dict[str, Any]:
    from bench.compare import parse_strace_counts

    trace = base / "strace-pysyncobj.txt"
    cmd = ["strace", "-c", "-f", "-e", "trace=fsync,fdatasync,msync", "-o", str(trace)]
    for p in pids:
        cmd += ["-p", str(p)]
    st = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    r = _point(conns, 1000, 0.0, 2.0, "pst")
    st.send_signal(signal.SIGINT)
    st.wait(30)
    calls = parse_strace_counts(trace.read_text() if trace.exists() else "")
    return {
        "writes": r["ops"],
        "calls": calls,
        "syncs_per_write": round(sum(calls.values()) / max(1, r["ops"]), 4),
    }
