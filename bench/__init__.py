"""Benchmarks: `make bench` runs bench/compare.py (Shardset against etcd and PySyncObj)."""
