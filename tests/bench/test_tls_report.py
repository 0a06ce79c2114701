"""The TLS cost in the report: the points measured again with TLS, and the table row
that puts the TLS figure beside the no-TLS one with their ratio."""

import argparse

from bench.compare import tls_markdown, tls_points


def test_tls_points_are_peak_writes_and_linearizable_reads() -> None:
    ns = argparse.Namespace(clients=[1, 8, 64, 256], read_clients=[64, 256])
    points = tls_points(ns)
    assert [(p["op"], p["clients"]) for p in points] == [("put", 256), ("get_lin", 256)]
    assert points[0]["label"] == "put, 256 clients"  # the same label as the plain point


def test_the_tls_table_shows_both_figures_and_the_ratio() -> None:
    cell = {"tls": {"ops_per_s": 800.0}, "no_tls_ops_per_s": 1000.0, "tls_over_no_tls": 0.8}
    etcd = {"tls": {"ops_per_s": 450.0}, "no_tls_ops_per_s": 500.0, "tls_over_no_tls": 0.9}
    report = {
        "setup": "TLS 1.3",
        "points": [{"point": "put, 256 clients", "shardset": cell, "etcd": etcd}],
    }
    text = "\n".join(tls_markdown(report))
    assert "| put, 256 clients | shardset | 1,000 | 800 | 0.800 |" in text
    assert "| put, 256 clients | etcd | 500 | 450 | 0.900 |" in text
