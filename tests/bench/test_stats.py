"""The benchmark's arithmetic: percentiles, ratios, repetitions, the table, the flags."""

import pytest

from bench import stats


def test_percentile_nearest_rank() -> None:
    xs = [float(i) for i in range(1, 1001)]
    assert stats.percentile(xs, 50) == 500.0
    assert stats.percentile(xs, 99) == 990.0
    assert stats.percentile(xs, 99.9) == 999.0
    assert stats.percentile(xs, 100) == 1000.0
    assert stats.percentile(xs, 0) == 1.0
    assert stats.percentile([], 50) is None
    assert stats.percentile([7.0], 99.9) == 7.0
    with pytest.raises(ValueError):
        stats.percentile(xs, 101)


def test_latency_summary_in_ms() -> None:
    s = stats.latency_summary([0.001, 0.002, 0.003, 0.004])
    assert s["p50_ms"] == 2.0
    assert s["p99_ms"] == 4.0
    assert s["max_ms"] == 4.0
    assert s["mean_ms"] == 2.5
    assert stats.latency_summary([])["p50_ms"] is None


def test_ratio_orientation() -> None:
    # throughput: ours over theirs; latency: theirs over ours; >= 1.0 means we are ahead
    assert stats.ratio(200.0, 100.0, higher_is_better=True) == 2.0
    assert stats.ratio(2.0, 1.0, higher_is_better=False) == 0.5
    assert stats.ratio(1.0, 2.0, higher_is_better=False) == 2.0
    assert stats.ratio(None, 1.0, higher_is_better=True) is None
    assert stats.ratio(0.0, 1.0, higher_is_better=True) is None


def test_combine_reps_medians_and_sums() -> None:
    reps = [
        {"ops_per_s": 100.0, "p50_ms": 1.0, "p99_ms": 5.0, "errors": 1, "ops": 10},
        {"ops_per_s": 300.0, "p50_ms": 3.0, "p99_ms": 9.0, "errors": 0, "ops": 30},
        {"ops_per_s": 200.0, "p50_ms": 2.0, "p99_ms": 7.0, "errors": 2, "ops": 20},
    ]
    c = stats.combine_reps(reps)
    assert c["ops_per_s"] == 200.0
    assert c["p50_ms"] == 2.0
    assert c["p99_ms"] == 7.0
    assert c["errors"] == 3
    assert c["ops"] == 60
    assert c["ops_per_s_spread"] == 1.0
    assert len(c["reps"]) == 3


def test_markdown_table_has_a_row_per_point_with_ratios() -> None:
    rows = [
        {
            "point": "put, 8 clients",
            "shardset": {"ops_per_s": 200.0, "p50_ms": 2.0, "p99_ms": 4.0, "errors": 0},
            "etcd": {"ops_per_s": 100.0, "p50_ms": 4.0, "p99_ms": 4.0, "errors": 1},
        }
    ]
    md = stats.markdown_table(rows).splitlines()
    assert len(md) == 3
    assert md[2].startswith("| put, 8 clients | 200 | 100 | 2.00 |")
    assert "| 2.00 | 1.00 | 0/1 |" in md[2]


def test_noisy_flags_moved_probes() -> None:
    before = {"fsync_p50_ms": 0.2, "rtt_p50_us": 20.0}
    assert stats.noisy(before, {"fsync_p50_ms": 0.25, "rtt_p50_us": 22.0}) == []
    flagged = stats.noisy(before, {"fsync_p50_ms": 0.5, "rtt_p50_us": 22.0})
    assert len(flagged) == 1 and "fsync_p50_ms" in flagged[0]
