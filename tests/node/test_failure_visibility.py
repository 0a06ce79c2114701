"""What a node reports about issue 15's failures, for operators and their tools: the
Protocol-Aware Recovery mark in `/v1/status`, and the disk and recovery state in
`/metrics` (otherwise these show only in logs)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from shardset_node.config import NodeConfig
from shardset_node.main import NodeProcess, assemble
from shardset_node.replication.host import DiskStall
from shardset_proto.shardmap import NodeAddress, ShardMap, bootstrap_map
from shardset_proto.status import NodeStatus


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _three_node_map() -> ShardMap:
    """Node 1 and two peers that never start: its groups stay without a leader, so
    nothing clears a recovery mark the test sets."""
    nodes = {
        n: NodeAddress(f"127.0.0.1:{_free_port()}", f"http://127.0.0.1:{_free_port()}")
        for n in (1, 2, 3)
    }
    return bootstrap_map(nodes, 2, 3)


Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]  # name -> labels -> value
Check = Callable[[NodeProcess, TestClient[Any, Any]], Awaitable[None]]


def _with_node(tmp_path: Path, check: Check, **cfg: Any) -> None:
    m = _three_node_map()
    port = int(m.nodes[1].peer.rsplit(":", 1)[1])
    config = NodeConfig(1, tmp_path, "127.0.0.1", port, m, fsync=False, **cfg)

    async def run() -> None:
        process = assemble(config)
        await process.start()
        try:
            async with TestClient(TestServer(process.app())) as client:
                await check(process, client)
        finally:
            await process.stop()

    asyncio.run(run())


async def _status(client: TestClient[Any, Any]) -> tuple[NodeStatus, dict[str, Any]]:
    r = await client.get("/v1/status")
    assert r.status == 200
    body = await r.json()
    return NodeStatus.model_validate(body), body


async def _metrics(client: TestClient[Any, Any]) -> Samples:
    r = await client.get("/metrics")
    assert r.status == 200
    found: Samples = {}
    for family in text_string_to_metric_families(await r.text()):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_status_reports_the_recovery_mark_of_a_group_and_omits_it_otherwise(
    tmp_path: Path,
) -> None:
    async def check(process: NodeProcess, client: TestClient[Any, Any]) -> None:
        _, before = await _status(client)
        for group in before["groups"].values():
            assert "recovering" not in group  # backward compatible: no key, not null
        # What NodeStorage sets when it cut a damaged WAL tail at start (raftstore.py).
        process.node.host.groups[2].raft.recovering = 57
        report, body = await _status(client)
        assert body["groups"]["2"]["recovering"] == 57
        group = report.group(2)  # what the operator and the CLI parse it with
        assert group is not None and group.recovering == 57
        assert "recovering" not in body["groups"]["1"]
        assert "recovering" not in body["groups"]["meta"]

    _with_node(tmp_path, check)


def test_metrics_name_recovering_groups(tmp_path: Path) -> None:
    async def check(process: NodeProcess, client: TestClient[Any, Any]) -> None:
        assert (await _metrics(client)).get("shardset_raft_recovering", {}) == {}
        process.node.host.groups[1].raft.recovering = 12
        assert (await _metrics(client))["shardset_raft_recovering"] == {(("shard", "1"),): 12.0}

    _with_node(tmp_path, check)


def test_metrics_report_disk_space_and_a_healthy_disk(tmp_path: Path) -> None:
    async def check(process: NodeProcess, client: TestClient[Any, Any]) -> None:
        found = await _metrics(client)
        assert found["shardset_disk_free_bytes"][()] > 0
        assert found["shardset_disk_total_bytes"][()] >= found["shardset_disk_free_bytes"][()]
        assert found["shardset_disk_min_free_bytes"][()] == process.node.cfg.min_free_bytes
        assert found["shardset_disk_full"][()] == 0.0
        assert found["shardset_disk_stalled"][()] == 0.0
        assert found["shardset_disk_stall_dropped_messages_total"][()] == 0.0

    _with_node(tmp_path, check, min_free_bytes=1)


def test_metrics_report_a_disk_below_the_reserve(tmp_path: Path) -> None:
    async def check(process: NodeProcess, client: TestClient[Any, Any]) -> None:
        deadline = time.monotonic() + 20  # the node checks its free space every second
        while process.node.low_space is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        found = await _metrics(client)
        assert found["shardset_disk_full"][()] == 1.0
        assert found["shardset_disk_stalled"][()] == 0.0

    # A reserve no file system has free: the node finds itself below it.
    _with_node(tmp_path, check, min_free_bytes=1 << 62)


def test_metrics_report_a_stalled_disk_and_the_messages_it_dropped(tmp_path: Path) -> None:
    async def check(process: NodeProcess, client: TestClient[Any, Any]) -> None:
        host = process.node.host
        await host.stop()  # frozen, so its retry cannot end the stall set below first
        # The state the host leaves after a write that failed with ENOSPC.
        host.disk_stall = DiskStall("the write-ahead log: no space left", time.time())
        host.dropped_while_stalled = 3
        found = await _metrics(client)
        assert found["shardset_disk_full"][()] == 1.0
        assert found["shardset_disk_stalled"][()] == 1.0
        assert found["shardset_disk_stall_dropped_messages_total"][()] == 3.0

    _with_node(tmp_path, check, min_free_bytes=1)


def test_metrics_report_a_malformed_engine_and_idle_closed_wire_connections(
    tmp_path: Path,
) -> None:
    async def check(process: NodeProcess, client: TestClient[Any, Any]) -> None:
        found = await _metrics(client)
        assert found["shardset_engine_malformed"] == {(): 0.0}
        assert found["shardset_wire_connections_closed_idle_total"] == {(): 0.0}
        process.node.engine.malformed = "database disk image is malformed"
        process.wire.closed_idle += 2
        found = await _metrics(client)
        assert found["shardset_engine_malformed"] == {(): 1.0}
        assert found["shardset_wire_connections_closed_idle_total"] == {(): 2.0}

    _with_node(tmp_path, check)
