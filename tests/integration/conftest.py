"""Fixtures for integration tests on real node processes: a local cluster in tmp_path,
always torn down (nodes killed, fault proxies stopped), with the tail of every node's log
printed when a test fails."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from shardset import local

# The test modules import their helpers (clusterkit.py) from this folder.
sys.path.insert(0, str(Path(__file__).resolve().parent))

NODES, SHARDS, REPLICATION = 3, 4, 3
LOG_TAIL_LINES = 25

ClusterFactory = Callable[..., local.LocalCluster]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def cluster_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ClusterFactory]:
    """`make(node_args=(), fault_proxies=False, tls=False)`: start a 3-node, 4-shard,
    3-replica cluster (fsync on) in tmp_path and wait until it is ready.

    Insecure by default (what these tests are about is not TLS, and TLS costs each test
    certificates and handshakes); `tls=True` starts it as `shardset local up` does:
    a local CA, TLS on every port, user local-admin (`cluster.client_tls()`)."""
    made: list[local.LocalCluster] = []

    def make(
        *, node_args: Sequence[str] = (), fault_proxies: bool = False, tls: bool = False
    ) -> local.LocalCluster:
        cluster = local.up(
            tmp_path / f"cluster-{len(made) + 1}",
            NODES,
            SHARDS,
            REPLICATION,
            node_args=node_args,
            fault_proxies=fault_proxies,
            remember=False,  # leave the CLI's "last local cluster" alone
            ready_timeout=60.0,
            stop_on_failure=True,
            tls=tls,
        )
        made.append(cluster)
        return cluster

    try:
        yield make
    finally:
        failed = any(
            getattr(getattr(request.node, f"rep_{when}", None), "failed", False)
            for when in ("setup", "call")
        )
        for cluster in made:
            try:
                cluster.shutdown(kill=True)
            finally:
                if failed:
                    _print_logs(cluster)


def _print_logs(cluster: local.LocalCluster) -> None:
    for node in cluster.node_ids:
        path = cluster.log_path(node)
        try:
            lines = path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            continue
        print(f"----- last {LOG_TAIL_LINES} lines of {path} -----")
        print("\n".join(lines[-LOG_TAIL_LINES:]))


def _one_node(tmp_path_factory: pytest.TempPathFactory, tls: bool) -> Iterator[local.LocalCluster]:
    cluster = local.up(
        tmp_path_factory.mktemp("one-node-tls" if tls else "one-node"),
        1,
        2,
        1,
        no_fsync=True,
        remember=False,
        ready_timeout=60.0,
        stop_on_failure=True,
        tls=tls,
    )
    try:
        yield cluster
    finally:
        cluster.shutdown(kill=True)


@pytest.fixture(scope="module")
def one_node_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local.LocalCluster]:
    """A one-node, two-shard store (no fsync) shared by the tests of one module: for
    tests of a node's front ends, where replication is not the point. Insecure."""
    yield from _one_node(tmp_path_factory, tls=False)


@pytest.fixture(scope="module")
def one_node_tls_store(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[local.LocalCluster]:
    """The same store with TLS as `shardset local up` starts it: HTTPS, TLS wire and
    admin ports, user local-admin (`cluster.client_tls()`), the operator identity
    (`cluster.operator_ssl()`)."""
    yield from _one_node(tmp_path_factory, tls=True)
