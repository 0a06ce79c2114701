"""Pure helpers of the comparison: percentiles, summaries of repetitions, target ratios,
the Markdown table. No I/O, so tests/bench checks them directly."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The nearest-rank percentile (q in [0, 100]) of already sorted values; None if empty.

    Nearest rank: the smallest value with at least q% of the values at or below it, so
    p99.9 of 1,000 samples is the largest one and is never interpolated below a sample.
    """
    if not sorted_values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    rank = max(1, math.ceil(q * len(sorted_values) / 100 - 1e-9))  # 99.9% of 1000: 999
    return float(sorted_values[rank - 1])


def latency_summary(latencies_s: Iterable[float]) -> dict[str, float | None]:
    """p50/p99/p99.9/mean/max in milliseconds of latencies given in seconds."""
    ms = sorted(x * 1000.0 for x in latencies_s)
    return {
        "p50_ms": _r(percentile(ms, 50)),
        "p99_ms": _r(percentile(ms, 99)),
        "p999_ms": _r(percentile(ms, 99.9)),
        "mean_ms": _r(statistics.fmean(ms)) if ms else None,
        "max_ms": _r(ms[-1]) if ms else None,
    }


def _r(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def median(values: Iterable[float | None]) -> float | None:
    vs = [v for v in values if v is not None]
    return statistics.median(vs) if vs else None


def combine_reps(reps: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One point's repetitions -> the point: medians of the per-repetition figures
    (ops/s and latency percentiles), sums of errors, and every repetition kept."""
    keys = ("ops_per_s", "p50_ms", "p99_ms", "p999_ms", "mean_ms", "entries_per_fsync")
    out: dict[str, Any] = {k: median(r.get(k) for r in reps) for k in keys}
    out["errors"] = sum(int(r.get("errors", 0)) for r in reps)
    out["ops"] = sum(int(r.get("ops", 0)) for r in reps)
    if len(reps) > 1 and all(r.get("ops_per_s") for r in reps):
        rates = [float(r["ops_per_s"]) for r in reps]
        out["ops_per_s_spread"] = round((max(rates) - min(rates)) / statistics.median(rates), 3)
    out["reps"] = list(reps)
    return out


def ratio(ours: float | None, theirs: float | None, *, higher_is_better: bool) -> float | None:
    """Oriented so that 1.0 or more is 'Shardset at least as good as etcd': ours/theirs for
    throughput, theirs/ours for latency. None when either side is missing or zero."""
    if ours is None or theirs is None or ours <= 0 or theirs <= 0:
        return None
    return round(ours / theirs if higher_is_better else theirs / ours, 3)


def fmt(x: Any, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if abs(x) >= 100:
            return f"{x:,.0f}"
        return f"{x:.{digits}f}" if abs(x) >= 1 else f"{x:.{max(digits, 2)}f}"
    return str(x)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """rows: {point, shardset: summary, etcd: summary}; the ratio columns are Shardset/etcd
    for ops/s and etcd/Shardset for latency, so above 1.0 Shardset is ahead on both."""
    head = (
        "| point | Shardset ops/s | etcd ops/s | ops/s ratio | Shardset p50 / p99 / p99.9 ms "
        "| etcd p50 / p99 / p99.9 ms | p50 ratio | p99 ratio | errors S/e |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for row in rows:
        s, e = row.get("shardset") or {}, row.get("etcd") or {}
        tput = ratio(s.get("ops_per_s"), e.get("ops_per_s"), higher_is_better=True)
        p50 = ratio(s.get("p50_ms"), e.get("p50_ms"), higher_is_better=False)
        p99 = ratio(s.get("p99_ms"), e.get("p99_ms"), higher_is_better=False)
        lines.append(
            f"| {row['point']} | {fmt(s.get('ops_per_s'))} | {fmt(e.get('ops_per_s'))} "
            f"| {fmt(tput, 2)} | {_lat(s)} | {_lat(e)} | {fmt(p50, 2)} | {fmt(p99, 2)} "
            f"| {s.get('errors', '-')}/{e.get('errors', '-')} |"
        )
    return "\n".join(lines)


def _lat(s: dict[str, Any]) -> str:
    return " / ".join(fmt(s.get(k), 2) for k in ("p50_ms", "p99_ms", "p999_ms"))


def noisy(before: dict[str, Any], after: dict[str, Any], *, factor: float = 1.5) -> list[str]:
    """Reasons to distrust a run: a probe that moved by more than `factor` between the
    probe before and the one after (fsync p50, loopback round trip p50)."""
    reasons = []
    for key in ("fsync_p50_ms", "rtt_p50_us"):
        a, b = before.get(key), after.get(key)
        if a and b and max(a, b) / min(a, b) > factor:
            reasons.append(f"{key} moved from {a} to {b} (more than x{factor})")
    return reasons
