"""Parsing strace's summary and Prometheus text; the target ratios' orientation."""

from bench.compare import parse_strace_counts, targets
from bench.systems import metric_sum

STRACE = """\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 99.71    0.512345         221      2318           fdatasync
  0.29    0.001500         500         3           fsync
------ ----------- ----------- --------- --------- ----------------
100.00    0.513845         221      2321           total
"""

METRICS = """\
# HELP shardset_raft_commit_index Commit index
shardset_raft_commit_index{group="meta"} 12.0
shardset_raft_commit_index{group="1"} 100.0
shardset_disk_syncs_total 42.0
etcd_disk_wal_fsync_duration_seconds_count 7
"""


def test_parse_strace_counts() -> None:
    assert parse_strace_counts(STRACE) == {"fdatasync": 2318, "fsync": 3}
    assert parse_strace_counts("") == {}


def test_metric_sum() -> None:
    assert metric_sum(METRICS, "shardset_raft_commit_index") == 112.0
    assert metric_sum(METRICS, "shardset_raft_commit_index", 'group="1"') == 100.0
    assert metric_sum(METRICS, "shardset_disk_syncs_total") == 42.0
    assert metric_sum(METRICS, "etcd_disk_wal_fsync_duration_seconds_count") == 7.0
    assert metric_sum(METRICS, "missing") == 0.0


def _row(kind: str, op: str, s: float, e: float, **kw: object) -> dict[str, object]:
    return {
        "kind": kind,
        "op": op,
        "shardset": {"ops_per_s": s, "p50_ms": kw.get("s50")},
        "etcd": {"ops_per_s": e, "p50_ms": kw.get("e50")},
    }


def test_targets_are_oriented_so_one_meets() -> None:
    report = {
        "points": [
            _row("serial", "put", 500.0, 600.0, s50=1.0, e50=2.0),
            _row("closed", "put", 3000.0, 1000.0),
            _row("closed", "put", 4000.0, 1500.0),
            _row("read", "get_lin", 900.0, 1000.0),
        ],
        "shard_scaling": {
            "by_shards": {
                "1": {"ops_per_s": 100.0},
                "4": {"ops_per_s": 120.0},
                "16": {"ops_per_s": 110.0},
            },
            "memory_per_idle_shard_replica_kib": 50.0,
        },
    }
    t = targets(report)
    # peak 4000 vs 1500 = 2.667x, against a 2.0x target
    assert t["peak_durable_write_throughput"]["ratio"] == round(4000 / 1500 / 2, 3)
    assert t["peak_durable_write_throughput"]["met"]
    assert t["serial_write_p50"]["ratio"] == 2.0 and t["serial_write_p50"]["met"]
    assert t["linearizable_read_throughput"]["ratio"] == 0.9
    assert not t["linearizable_read_throughput"]["met"]
    assert t["shard_scaling"]["ratio"] == 1.1 and t["shard_scaling"]["met"]
