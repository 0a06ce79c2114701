"""Shardset against etcd (and PySyncObj) on this machine: `make bench`.

Starts a 3-member etcd (built from its Go module, reached over gRPC) and Shardset's
local 3-node cluster (replication 3, fsync on) with their data dirs side by side, then
runs every point of the comparison with the same load generator (bench/loadgen.py):

- serial: one client, `--serial-puts` puts in all (split over the repetitions);
- closed loop writes at 1, 8, 64, 256 clients;
- open loop writes at fixed rates, latency from the scheduled send;
- linearizable reads (64, 256 clients), stale reads (64), a 90/10 read/write mix (64);
- Shardset alone with 1, 4 and 16 shards on the same 3 nodes (peak writes), and the
  memory of an idle shard replica;
- PySyncObj (bench/pysyncobj_bench.py) on its own shape: a replicated dict on 3 nodes,
  requests issued inside the node processes.

Every point: warm-up, measured window, 3 repetitions, the two systems alternating which
goes first. Per point: ops/s, p50/p99/p99.9, errors, CPU seconds per process (servers
and load generator workers), Raft entries per fsync (from each system's metrics). Once
per system, `strace -c -f -e fsync,fdatasync` over a serial and a 64-client window gives
fsyncs per acknowledged write. Before and after: the fsync and loopback probes. After the
run every acknowledged key is read back from each cluster and checked.

Writes bench/results/<date>.json, .md and .png, and the table into docs/performance.md
between its markers. Run: ``nice -n 10 .venv/bin/python -m bench.compare [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import etcdpb, probes, stats
from bench.loadgen import Job, LoadGen, Result, b36, split
from bench.systems import REPO, Etcd, Shardset, cpu_seconds, etcd_version, rss_kib

RESULTS = REPO / "bench" / "results"
DOC = REPO / "docs" / "performance.md"
BEGIN, END = "<!-- bench:results:begin -->", "<!-- bench:results:end -->"

System = Etcd | Shardset
OTHER_CPU_NOISY = 0.25  # cores used by processes outside the benchmark during its windows


class Runner:
    def __init__(self, ns: argparse.Namespace, lg: LoadGen) -> None:
        self.ns = ns
        self.lg = lg
        self.run_id = 0
        self.acked: dict[str, list[str]] = {}  # cluster label -> acknowledged keys
        self.log: list[str] = []

    def say(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        self.log.append(line)

    def tag(self) -> str:
        self.run_id += 1
        return b36(self.run_id, 3)

    def jobs(
        self,
        system: System,
        clients: int,
        op: str,
        *,
        mode: str = "closed",
        rate: float = 0.0,
        count: int = 0,
        warmup: float | None = None,
        measure: float | None = None,
        read_keys: list[str] | None = None,
        read_fraction: float = 0.0,
    ) -> list[Job]:
        workers = self.ns.workers if mode == "closed" else min(self.ns.workers, 2)
        parts = split(clients, workers) if mode == "closed" else [0] * workers
        start_at = time.time() + 0.3
        tag = self.tag()
        out = []
        for i, c in enumerate(parts):
            eps = system.endpoints if system.name == "shardset" else [system.endpoints[i % 3]]
            out.append(
                Job(
                    system=system.name,
                    endpoints=list(eps),
                    worker=i,
                    clients=c,
                    op=op,
                    start_at=start_at,
                    warmup=self.ns.warmup if warmup is None else warmup,
                    measure=self.ns.measure if measure is None else measure,
                    tag=tag,
                    mode=mode,
                    rate=rate / len(parts) if rate else 0.0,
                    count=(count // len(parts) + (1 if i < count % len(parts) else 0))
                    if count
                    else 0,
                    read_fraction=read_fraction,
                    read_keys=read_keys or [],
                    seed=self.run_id * 100 + i,
                    protocol=self.ns.protocol,
                    tls=dict(system.tls_paths),
                )
            )
        return out

    def run_point(self, system: System, label: str, jobs: list[Job]) -> dict[str, Any]:
        """One repetition of one point on one system, with CPU and disk counters sampled
        over the measured window (by count: from the window's start to the end)."""
        pids = {f"{system.name}-{i}": p for i, p in enumerate(system.pids)}
        pids.update({f"loadgen-{i}": p for i, p in enumerate(self.lg.pids[: len(jobs)])})
        sample: dict[str, Any] = {}
        m_start = jobs[0].start_at + jobs[0].warmup
        m_end = m_start + jobs[0].measure if not jobs[0].count else None

        def take(name: str) -> None:
            sample[name] = (
                {k: cpu_seconds(p) for k, p in pids.items()},
                system.disk_counters(),
                probes.machine_cpu_seconds(),
                time.time(),
            )

        async def during() -> None:
            await asyncio.sleep(max(0.0, m_start - time.time()))
            await asyncio.to_thread(take, "start")
            if m_end is not None:
                await asyncio.sleep(max(0.0, m_end - time.time()))
                await asyncio.to_thread(take, "end")

        results = self.lg.run(jobs, during)
        if "end" not in sample:
            take("end")
        self.acked.setdefault(self.cluster_label(system), []).extend(
            k for r in results for k in r.acked
        )
        return summarize(results, sample, system.name, label)

    @staticmethod
    def cluster_label(system: System) -> str:
        label = system.name if system.name == "etcd" else f"shardset-{system.shards}"
        return label + ("-tls" if system.tls else "")


def summarize(
    results: list[Result], sample: dict[str, Any], system: str, label: str
) -> dict[str, Any]:
    lat = [x for r in results for x in r.latencies]
    window = max((r.window for r in results), default=0.0) or 1e-9
    (cpu0, disk0, mach0, t0), (cpu1, disk1, mach1, t1) = sample["start"], sample["end"]
    cpu = {k: round(cpu1[k] - cpu0.get(k, 0.0), 3) for k in cpu1}
    d_entries = disk1["entries"] - disk0["entries"]
    d_fsyncs = disk1["fsyncs"] - disk0["fsyncs"]
    elapsed = max(1e-9, t1 - t0)
    ours = sum(cpu.values())
    out: dict[str, Any] = {
        "system": system,
        "point": label,
        "ops": len(lat),
        "window_s": round(window, 3),
        "ops_per_s": round(len(lat) / window, 1),
        **stats.latency_summary(lat),
        "errors": sum(r.errors for r in results),
        "shed": sum(r.shed for r in results),
        "bad_values": sum(r.bad_values for r in results),
        "error_samples": [s for r in results for s in r.error_samples][:3],
        "cpu_s": cpu,
        "cpu_s_per_1k_ops": round(1000 * ours / max(1, len(lat) * elapsed / window), 3),
        "server_cpu_ms_per_op": _per_op(cpu, system, len(lat) * elapsed / window),
        "loadgen_cpu_ms_per_op": _per_op(cpu, "loadgen", len(lat) * elapsed / window),
        "entries_per_fsync": round(d_entries / d_fsyncs, 2) if d_fsyncs else None,
        "fsyncs_per_s": round(d_fsyncs / elapsed, 1),
        "other_cpu_s_per_s": round(max(0.0, (mach1 - mach0) - ours) / elapsed, 3),
    }
    return out


def _per_op(cpu: dict[str, float], prefix: str, ops: float) -> float | None:
    total = sum(v for k, v in cpu.items() if k.startswith(prefix + "-"))
    return round(1000 * total / ops, 3) if ops >= 1 else None


# --- the points -------------------------------------------------------------------------
def comparison_points(ns: argparse.Namespace) -> list[dict[str, Any]]:
    pts: list[dict[str, Any]] = [
        {
            "label": "serial put (1 client)",
            "clients": 1,
            "op": "put",
            "count": max(1, ns.serial_puts // ns.reps),
            "kind": "serial",
        },
    ]
    # The serial client is the closed loop at 1 client (by count rather than by time).
    for c in (c for c in ns.clients if c > 1):
        pts.append({"label": f"put, {c} clients", "clients": c, "op": "put", "kind": "closed"})
    for r in ns.rates:
        pts.append({"label": f"put, open loop {r}/s", "rate": r, "op": "put", "kind": "open"})
    for c in ns.read_clients:
        pts.append(
            {
                "label": f"linearizable get, {c} clients",
                "clients": c,
                "op": "get_lin",
                "kind": "read",
            }
        )
    pts.append(
        {
            "label": f"stale get, {ns.mix_clients} clients",
            "clients": ns.mix_clients,
            "op": "get_stale",
            "kind": "read",
        }
    )
    pts.append(
        {
            "label": f"90/10 get/put, {ns.mix_clients} clients",
            "clients": ns.mix_clients,
            "op": "mix",
            "kind": "mix",
        }
    )
    return pts


def run_comparison(
    runner: Runner, etcd: Etcd, shardset: Shardset, read_keys: dict[str, list[str]]
) -> list[dict[str, Any]]:
    ns = runner.ns
    points = comparison_points(ns)
    reps: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rep in range(ns.reps):
        order: list[System] = [etcd, shardset] if rep % 2 == 0 else [shardset, etcd]
        for pt in points:
            for system in order:
                jobs = point_jobs(runner, system, pt, read_keys[system.name])
                r = runner.run_point(system, pt["label"], jobs)
                r["rep"] = rep
                reps.setdefault((pt["label"], system.name), []).append(r)
                runner.say(
                    f"rep {rep} {system.name:8s} {pt['label']:34s} {r['ops_per_s']:>9} ops/s "
                    f"p50 {r['p50_ms']} p99 {r['p99_ms']} ms err {r['errors']}"
                    f" e/fsync {r['entries_per_fsync']}"
                )
    rows = []
    for pt in points:
        row: dict[str, Any] = {"point": pt["label"], "kind": pt["kind"]}
        for key in ("clients", "rate", "op"):
            if key in pt:
                row[key] = pt[key]
        for name in ("shardset", "etcd"):
            row[name] = stats.combine_reps(reps[(pt["label"], name)])
        rows.append(row)
    return rows


def point_jobs(runner: Runner, system: System, pt: dict[str, Any], keys: list[str]) -> list[Job]:
    kind = pt["kind"]
    if kind == "serial":
        return runner.jobs(system, 1, "put", count=pt["count"], measure=0.0)
    if kind == "open":
        return runner.jobs(system, 0, "put", mode="open", rate=float(pt["rate"]))
    if kind == "mix":
        return runner.jobs(system, pt["clients"], "mix", read_keys=keys, read_fraction=0.9)
    return runner.jobs(system, pt["clients"], pt["op"], read_keys=keys)


def preload(runner: Runner, system: System, n: int) -> list[str]:
    jobs = runner.jobs(system, 64, "put", count=n, warmup=0.0, measure=0.0)
    res = runner.lg.run(jobs)
    keys = [k for r in res for k in r.acked]
    runner.acked.setdefault(runner.cluster_label(system), []).extend(keys)
    return keys


# --- the cost of TLS -----------------------------------------------------------------
def tls_points(ns: argparse.Namespace) -> list[dict[str, Any]]:
    """The points measured again with TLS: peak writes and linearizable reads."""
    return [
        {"label": f"put, {max(ns.clients)} clients", "clients": max(ns.clients), "op": "put",
         "kind": "closed"},
        {"label": f"linearizable get, {max(ns.read_clients)} clients",
         "clients": max(ns.read_clients), "op": "get_lin", "kind": "read"},
    ]  # fmt: skip


def run_tls(
    runner: Runner, plain_rows: list[dict[str, Any]], cleanup: list[Callable[[], None]]
) -> dict[str, Any]:
    """Both systems again with TLS on (client certificates, ECDSA P-256 for both,
    peers over mutual TLS), on the TLS points; the ratio TLS/no-TLS per system, against
    the same points of the comparison run just before."""
    ns = runner.ns
    etcd = Etcd(ns.base, tls=True)
    cleanup.append(etcd.stop)
    shardset = Shardset(ns.base, shards=ns.shards, tls=True)
    cleanup.append(shardset.stop)
    keys = {s.name: preload(runner, s, 2000) for s in (etcd, shardset)}
    reps: dict[tuple[str, str], list[dict[str, Any]]] = {}
    points = tls_points(ns)
    for rep in range(ns.reps):
        order: list[System] = [etcd, shardset] if rep % 2 == 0 else [shardset, etcd]
        for pt in points:
            for system in order:
                r = runner.run_point(
                    system, pt["label"], point_jobs(runner, system, pt, keys[system.name])
                )
                r["rep"] = rep
                reps.setdefault((pt["label"], system.name), []).append(r)
                runner.say(
                    f"rep {rep} {system.name:8s} TLS {pt['label']:30s} {r['ops_per_s']:>9} "
                    f"ops/s p50 {r['p50_ms']} p99 {r['p99_ms']} ms err {r['errors']}"
                )
    plain = {r["point"]: r for r in plain_rows}
    rows = []
    for pt in points:
        row: dict[str, Any] = {"point": pt["label"], "kind": pt["kind"], "op": pt["op"]}
        for name in ("shardset", "etcd"):
            tls_row = stats.combine_reps(reps[(pt["label"], name)])
            base = plain.get(pt["label"], {}).get(name, {}).get("ops_per_s")
            row[name] = {
                "tls": tls_row,
                "no_tls_ops_per_s": base,
                "tls_over_no_tls": stats.ratio(tls_row["ops_per_s"], base, higher_is_better=True),
            }
        rows.append(row)
    readback = {
        "etcd-tls": etcd.readback(runner.acked.get("etcd-tls", [])),
        f"shardset-{ns.shards}-tls": shardset.readback(
            runner.acked.get(f"shardset-{ns.shards}-tls", [])
        ),
    }
    etcd.stop()
    shardset.stop()
    return {
        "setup": "TLS 1.3 on client and peer connections, client certificates (etcd: "
        "--client-cert-auth, --peer-client-cert-auth; Shardset: user bench, role readwrite), "
        "ECDSA P-256 keys for both",
        "points": rows,
        "ratios": {
            name: {row["op"]: row[name]["tls_over_no_tls"] for row in rows}
            for name in ("shardset", "etcd")
        },
        "readback": readback,
    }


def tls_markdown(tls: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"TLS cost ({tls['setup']}): ops/s with TLS against the same point without.",
        "",
        "| point | system | no TLS ops/s | TLS ops/s | TLS/no-TLS |",
        "|---|---|---:|---:|---:|",
    ]
    for row in tls["points"]:
        for name in ("shardset", "etcd"):
            cell = row[name]
            lines.append(
                f"| {row['point']} | {name} | {stats.fmt(cell['no_tls_ops_per_s'], 1)} | "
                f"{stats.fmt(cell['tls']['ops_per_s'], 1)} | "
                f"{stats.fmt(cell['tls_over_no_tls'], 3)} |"
            )
    return lines


# --- fsyncs per write under strace -------------------------------------------------------
def strace_fsyncs(runner: Runner, system: System) -> list[dict[str, Any]]:
    out = []
    for clients, seconds in ((1, 2.0), (64, 3.0)):
        trace = Path(runner.ns.base) / f"strace-{system.name}-{clients}.txt"
        cmd = ["strace", "-c", "-f", "-e", "trace=fsync,fdatasync,msync", "-o", str(trace)]
        for pid in system.pids:
            cmd += ["-p", str(pid)]
        st = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # attached to every thread
        jobs = runner.jobs(system, clients, "put", warmup=0.0, measure=seconds)
        res = runner.lg.run(jobs)
        time.sleep(0.3)
        st.send_signal(signal.SIGINT)
        st.wait(30)
        acked = [k for r in res for k in r.acked]
        runner.acked.setdefault(runner.cluster_label(system), []).extend(acked)
        calls = parse_strace_counts(trace.read_text() if trace.exists() else "")
        n = sum(calls.values())
        out.append(
            {
                "clients": clients,
                "acked_writes": len(acked),
                "calls": calls,
                "fsyncs_per_write": round(n / len(acked), 3) if acked else None,
                "note": "calls of every server process and thread, while under strace",
            }
        )
        runner.say(f"strace {system.name} {clients} clients: {calls} for {len(acked)} writes")
    return out


def parse_strace_counts(text: str) -> dict[str, int]:
    """The `calls` column of `strace -c`'s summary, by syscall."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$", line)
        if m and m.group(2) != "total":
            out[m.group(2)] = out.get(m.group(2), 0) + int(m.group(1))
    return out


# --- shards 1 / 4 / 16 ---------------------------------------------------------------
def pause(system: Shardset, stop: bool) -> None:
    for pid in system.pids:
        os.kill(pid, signal.SIGSTOP if stop else signal.SIGCONT)


def run_shard_scaling(runner: Runner, clusters: dict[int, Shardset]) -> dict[str, Any]:
    ns = runner.ns
    idle: dict[int, list[int]] = {}
    for shards, c in clusters.items():
        idle[shards] = [rss_kib(p) for p in c.pids]
    lo, hi = min(clusters), max(clusters)
    per_replica = (sum(idle[hi]) - sum(idle[lo])) / len(idle[hi]) / (hi - lo)
    reps: dict[int, list[dict[str, Any]]] = {s: [] for s in clusters}
    order = sorted(clusters)
    for s in order:
        pause(clusters[s], True)
    try:
        for rep in range(ns.reps):
            for s in order if rep % 2 == 0 else list(reversed(order)):
                c = clusters[s]
                pause(c, False)
                try:
                    jobs = runner.jobs(c, ns.scaling_clients, "put", warmup=ns.warmup + 1.0)
                    r = runner.run_point(c, f"put, {ns.scaling_clients} clients", jobs)
                finally:
                    pause(c, True)
                r["rep"] = rep
                reps[s].append(r)
                runner.say(
                    f"rep {rep} shards {s:2d} {r['ops_per_s']:>9} ops/s p50 {r['p50_ms']} "
                    f"p99 {r['p99_ms']} err {r['errors']} e/fsync {r['entries_per_fsync']}"
                )
    finally:
        for s in order:
            pause(clusters[s], False)
    return {
        "clients": ns.scaling_clients,
        "by_shards": {str(s): stats.combine_reps(reps[s]) for s in order},
        "idle_rss_kib_per_node": {str(s): idle[s] for s in order},
        "memory_per_idle_shard_replica_kib": round(per_replica, 1),
        "note": "clusters not being measured are paused (SIGSTOP); the measured one gets "
        "an extra second of warm-up after SIGCONT",
    }


# --- the run ---------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: 1 rep, short windows")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument(
        "--protocol",
        choices=["wire", "http"],
        default="wire",
        help="Shardset's client protocol (binary wire, or HTTP/JSON)",
    )
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--measure", type=float, default=4.0)
    p.add_argument("--workers", type=int, default=4, help="load generator processes")
    p.add_argument("--serial-puts", type=int, default=10_000)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64, 256])
    p.add_argument("--rates", type=int, nargs="+", default=[250, 1000])
    p.add_argument("--read-clients", type=int, nargs="+", default=[64, 256])
    p.add_argument("--mix-clients", type=int, default=64)
    p.add_argument("--scaling-clients", type=int, default=256)
    p.add_argument("--shards", type=int, default=4, help="Shardset's shards in the comparison")
    p.add_argument("--pysyncobj-rates", type=int, nargs="+", default=[1500, 3000, 6000, 12000])
    p.add_argument("--no-pysyncobj", action="store_true")
    p.add_argument("--no-scaling", action="store_true")
    p.add_argument("--no-tls", action="store_true", help="skip the TLS cost points")
    p.add_argument("--base", type=Path, default=REPO / "bench" / ".work")
    p.add_argument("--out", type=Path, default=None, help="default bench/results/<date>")
    p.add_argument("--no-doc", action="store_true", help="leave docs/performance.md alone")
    ns = p.parse_args()
    if ns.quick:
        ns.reps, ns.measure, ns.warmup, ns.serial_puts = 1, 1.5, 0.5, 300
        ns.pysyncobj_rates = [1500, 6000, 12000]
    began = time.time()
    ns.base = ns.base.resolve()
    ns.base.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    date = time.strftime("%Y-%m-%d", time.gmtime())
    # A smoke run never replaces the day's results.
    out = ns.out or (ns.base / f"quick-{date}" if ns.quick else RESULTS / date)
    etcdpb.compile_stubs()  # once, before the workers (which import the stubs) start

    lg = LoadGen(ns.workers)
    runner = Runner(ns, lg)
    report: dict[str, Any] = {"date": date, "machine": machine(ns.base)}
    cleanup: list[Callable[[], None]] = [lg.close]
    try:
        runner.say("probe before")
        report["probe_before"] = probes.probe(ns.base)
        runner.say(f"  {report['probe_before']}")
        runner.say("starting etcd and Shardset")
        etcd = Etcd(ns.base)
        cleanup.append(etcd.stop)
        shardset = Shardset(ns.base, shards=ns.shards)
        cleanup.append(shardset.stop)
        report["setup"] = setup(ns)
        keys = {s.name: preload(runner, s, 2000) for s in (etcd, shardset)}
        rows = run_comparison(runner, etcd, shardset, keys)
        report["points"] = rows
        report["fsync_strace"] = {s.name: strace_fsyncs(runner, s) for s in (etcd, shardset)}
        runner.say("reading back every acknowledged key")
        report["readback"] = {
            "etcd": etcd.readback(runner.acked.get("etcd", [])),
            f"shardset-{ns.shards}": shardset.readback(
                runner.acked.get(f"shardset-{ns.shards}", [])
            ),
        }
        runner.say(f"  {report['readback']}")
        etcd.stop()
        if not ns.no_tls:
            runner.say("TLS: etcd and Shardset again with TLS on (the no-TLS Shardset paused)")
            pause(shardset, True)
            try:
                report["tls"] = run_tls(runner, rows, cleanup)
            finally:
                pause(shardset, False)
            report["readback"].update(report["tls"].pop("readback"))
        if not ns.no_scaling:
            clusters: dict[int, Shardset] = {ns.shards: shardset}
            for s in sorted({1, 4, 16} - {ns.shards}):
                runner.say(f"starting Shardset with {s} shards")
                clusters[s] = Shardset(ns.base, shards=s)
                cleanup.append(clusters[s].stop)
            time.sleep(2.0)
            report["shard_scaling"] = run_shard_scaling(runner, clusters)
            for s, c in clusters.items():
                if s != ns.shards:
                    report["readback"][f"shardset-{s}"] = c.readback(
                        runner.acked.get(f"shardset-{s}", [])
                    )
                    c.stop()
        shardset.stop()
        if not ns.no_pysyncobj:
            from bench import pysyncobj_bench

            runner.say("PySyncObj")
            ps = pysyncobj_bench.run(ns.base, ns, runner.say)
            s_peak = _best(report["points"], "closed", "put", "shardset")
            ps["shardset_ops_per_s"] = s_peak
            ps["summary"] = (
                f"best {ps['best_ops_per_s']} ops/s (in-memory / file journal, at >= 90% "
                f"success) against Shardset's peak durable {s_peak} puts/s; PySyncObj "
                f"syncs per write under strace: {ps.get('strace', {}).get('syncs_per_write')}"
            )
            report["pysyncobj"] = ps
        runner.say("probe after")
        report["probe_after"] = probes.probe(ns.base)
        runner.say(f"  {report['probe_after']}")
    finally:
        for f in reversed(cleanup):
            try:
                f()
            except Exception as e:
                print(f"cleanup: {e!r}", file=sys.stderr)
    report["noisy"] = stats.noisy(report["probe_before"], report["probe_after"])
    other = other_cpu(report)
    report["other_cpu_cores_median"] = other
    if other is not None and other > OTHER_CPU_NOISY:
        report["noisy"].append(
            f"other processes used {other} of the {os.cpu_count()} cores (median over windows)"
        )
    report["targets"] = targets(report)
    report.update({f"{k}_ratio": v["ratio"] for k, v in report["targets"].items()})
    if report.get("tls"):  # reported, with no target of its own: TLS costs what it costs
        report["tls_ratios"] = report["tls"]["ratios"]
    report["elapsed_s"] = round(time.time() - began, 1)
    report["log"] = runner.log
    md = render_markdown(report)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(md)
    plot(report, out.with_suffix(".png"))
    if not ns.no_doc and not ns.quick:
        update_doc(md)
    print(md)
    print(f"\nwrote {out}.json, .md, .png in {report['elapsed_s']} s")


def setup(ns: argparse.Namespace) -> dict[str, Any]:
    return {
        "replicas": 3,
        "key_bytes": 8,
        "value_bytes": 256,
        "etcd": {
            "version": etcd_version(),
            "api": "gRPC KV (vendored proto)",
            "durability": "default: WAL fdatasync before acknowledging (majority)",
        },
        "shardset": {
            "shards": ns.shards,
            "nodes": 3,
            "replication": 3,
            "api": "HTTP /v1/kv (shardset.client.Client)",
            "durability": "fsync on: WAL fdatasync before acknowledging (majority)",
        },
        "reps": ns.reps,
        "warmup_s": ns.warmup,
        "measure_s": ns.measure,
        "loadgen_processes": ns.workers,
        "stale_reads": {
            "shardset": "consistency=eventual (any replica)",
            "etcd": "serializable Range (the member the worker is connected to)",
        },
        "data_dirs": str(ns.base),
    }


def machine(base: Path) -> dict[str, Any]:
    fs = subprocess.run(
        ["df", "-T", str(base)], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "filesystem": fs[-1].split()[1] if len(fs) > 1 else "?",
        "nice": os.nice(0),
    }


def other_cpu(report: dict[str, Any]) -> float | None:
    vals = [
        rep["other_cpu_s_per_s"]
        for row in report.get("points", [])
        for name in ("shardset", "etcd")
        for rep in row[name]["reps"]
    ]
    return round(statistics.median(vals), 2) if vals else None


def _best(rows: list[dict[str, Any]], kind: str, op: str, system: str) -> float | None:
    vals = [
        r[system]["ops_per_s"]
        for r in rows
        if r["kind"] == kind and r.get("op") == op and r[system]["ops_per_s"] is not None
    ]
    return max(vals) if vals else None


def targets(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows = report.get("points", [])
    out: dict[str, dict[str, Any]] = {}
    s_peak, e_peak = _best(rows, "closed", "put", "shardset"), _best(rows, "closed", "put", "etcd")
    raw = stats.ratio(s_peak, e_peak, higher_is_better=True)
    out["peak_durable_write_throughput"] = {
        "want": ">= 2.0x etcd",
        "shardset": s_peak,
        "etcd": e_peak,
        "shardset_over_etcd": raw,
        "ratio": None if raw is None else round(raw / 2.0, 3),
    }
    serial = next((r for r in rows if r["kind"] == "serial"), None)
    if serial:
        s50, e50 = serial["shardset"]["p50_ms"], serial["etcd"]["p50_ms"]
        out["serial_write_p50"] = {
            "want": "p50 <= etcd's",
            "shardset_ms": s50,
            "etcd_ms": e50,
            "ratio": stats.ratio(s50, e50, higher_is_better=False),
        }
    s_lin, e_lin = (
        _best(rows, "read", "get_lin", "shardset"),
        _best(rows, "read", "get_lin", "etcd"),
    )
    out["linearizable_read_throughput"] = {
        "want": ">= 1.0x etcd",
        "shardset": s_lin,
        "etcd": e_lin,
        "ratio": stats.ratio(s_lin, e_lin, higher_is_better=True),
    }
    sc = report.get("shard_scaling")
    if sc:
        by = {int(k): v["ops_per_s"] for k, v in sc["by_shards"].items()}
        lo = by[min(by)]
        worst = min(v for k, v in by.items() if k != min(by))
        out["shard_scaling"] = {
            "want": "ops/s at 4 and 16 shards >= at 1 shard",
            "ops_per_s_by_shards": by,
            "memory_per_idle_shard_replica_kib": sc["memory_per_idle_shard_replica_kib"],
            "ratio": stats.ratio(worst, lo, higher_is_better=True),
        }
    ps = report.get("pysyncobj")
    if ps:
        out["pysyncobj"] = {
            "want": "Shardset ahead of PySyncObj on its shape",
            "shardset": ps.get("shardset_ops_per_s"),
            "pysyncobj": ps.get("pysyncobj_ops_per_s"),
            "ratio": stats.ratio(
                ps.get("shardset_ops_per_s"), ps.get("pysyncobj_ops_per_s"), higher_is_better=True
            ),
        }
    for t in out.values():
        t["met"] = t["ratio"] is not None and t["ratio"] >= 1.0
    return out


def render_markdown(report: dict[str, Any]) -> str:
    lines = [f"### Run of {report['date']} ({report.get('elapsed_s', '?')} s)", ""]
    pb, pa = report.get("probe_before", {}), report.get("probe_after", {})
    lines.append(
        f"Machine: {report['machine']['cpus']} CPUs, {report['machine']['filesystem']}; "
        f"fsync p50 {pb.get('fsync_p50_ms')} -> {pa.get('fsync_p50_ms')} ms, loopback RTT p50 "
        f"{pb.get('rtt_p50_us')} -> {pa.get('rtt_p50_us')} us (before -> after); other "
        f"processes' CPU during the windows: {report.get('other_cpu_cores_median')} cores "
        "(median). "
        + (
            "**Noisy run**: " + "; ".join(report["noisy"])
            if report.get("noisy")
            else "Not flagged noisy."
        )
    )
    lines += [
        "",
        "Ratios: ops/s Shardset/etcd, latency etcd/Shardset (above 1.0: Shardset ahead).",
        "Medians of the repetitions.",
        "",
    ]
    lines.append(stats.markdown_table(report.get("points", [])))
    if report.get("tls"):
        lines += tls_markdown(report["tls"])
    lines += [
        "",
        "| target | want | measured | ratio (>= 1.0 meets) | met |",
        "|---|---|---|---:|---|",
    ]
    for name, t in report.get("targets", {}).items():
        measured = {k: v for k, v in t.items() if k not in ("want", "ratio", "met")}
        lines.append(
            f"| {name} | {t['want']} | {json.dumps(measured)} | {stats.fmt(t['ratio'], 3)} "
            f"| {'yes' if t['met'] else 'no'} |"
        )
    other = [
        ("fsyncs per acknowledged write (strace, all 3 members)", _fsync_line(report)),
        ("entries per fsync (peak write point, summed over members)", _epf_line(report)),
        ("CPU ms per op, servers / load generator (median of reps)", _cpu_line(report)),
        (
            "read-back",
            json.dumps(
                {k: (v["ok"], v["acknowledged"]) for k, v in report.get("readback", {}).items()}
            ),
        ),
    ]
    sc = report.get("shard_scaling")
    if sc:
        by = ", ".join(
            f"{s}: {v['ops_per_s']} ops/s (p99 {v['p99_ms']} ms)"
            for s, v in sc["by_shards"].items()
        )
        other.append((f"Shardset shards, put at {sc['clients']} clients", by))
        other.append(
            ("memory per idle shard replica", f"{sc['memory_per_idle_shard_replica_kib']} KiB")
        )
    ps = report.get("pysyncobj")
    if ps:
        other.append(("PySyncObj", ps.get("summary", "")))
    lines += [""] + [f"- {k}: {v}" for k, v in other]
    return "\n".join(lines) + "\n"


def _fsync_line(report: dict[str, Any]) -> str:
    parts = []
    for name, runs in report.get("fsync_strace", {}).items():
        parts.append(
            name
            + " "
            + ", ".join(f"{r['fsyncs_per_write']} at {r['clients']} client(s)" for r in runs)
        )
    return "; ".join(parts)


def _cpu_line(report: dict[str, Any]) -> str:
    parts = []
    for row in report.get("points", []):
        if row["kind"] not in ("serial", "closed", "read") or row.get("clients") not in (1, 256):
            continue
        cells = []
        for n in ("shardset", "etcd"):
            srv = stats.median(r.get("server_cpu_ms_per_op") for r in row[n]["reps"])
            lg = stats.median(r.get("loadgen_cpu_ms_per_op") for r in row[n]["reps"])
            cells.append(f"{n} {stats.fmt(srv, 2)} / {stats.fmt(lg, 2)}")
        parts.append(f"{row['point']}: " + ", ".join(cells))
    return "; ".join(parts) or "-"


def _epf_line(report: dict[str, Any]) -> str:
    rows = [r for r in report.get("points", []) if r["kind"] == "closed"]
    if not rows:
        return "-"
    top = max(rows, key=lambda r: r["clients"])
    return ", ".join(f"{n} {top[n]['entries_per_fsync']}" for n in ("shardset", "etcd"))


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report.get("points", []) if r["kind"] in ("serial", "closed")]
    rows.sort(key=lambda r: r["clients"])
    if not rows:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, color in (("shardset", "tab:blue"), ("etcd", "tab:orange")):
        xs = [r["clients"] for r in rows]
        a.plot(xs, [r[name]["ops_per_s"] for r in rows], "o-", color=color, label=name)
        b.plot(xs, [r[name]["p99_ms"] for r in rows], "o-", color=color, label=name)
    for ax, title, ylabel in ((a, "durable puts, closed loop", "ops/s"), (b, "p99 latency", "ms")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("clients")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend()
    b.set_yscale("log")
    fig.suptitle(
        f"Shardset vs etcd {etcd_version()}, 3 replicas, 8 B keys, 256 B values ({report['date']})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def update_doc(md: str) -> None:
    if not DOC.exists():
        return
    text = DOC.read_text()
    if BEGIN not in text or END not in text:
        return
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{BEGIN}\n{md}{END}{tail}")


if __name__ == "__main__":
    main()
