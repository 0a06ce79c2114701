"""The status contract (shardset_proto.status): GET /v1/status and GET /v1/shardmap as
typed reports, parsed from exactly what the node serves and serialized back to it."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from shardset_node.config import NodeConfig
from shardset_node.main import assemble
from shardset_node.status import shardmap_view, status
from shardset_proto.shardmap import NodeAddress, ShardMap, bootstrap_map
from shardset_proto.status import (
    META_KEY,
    GroupRole,
    NodeStatus,
    ShardMapView,
    group_key,
)

# A leader's report as Node.status() writes it: the metadata group and shard 2 led
# here (with followers), shard 1 followed.
STATUS: dict[str, Any] = {
    "node": 1,
    "origin": "bootstrap",
    "epoch": 4,
    "consistency": {"mode": "bounded", "maxStalenessMs": 250},
    "groups": {
        "meta": {
            "role": "leader",
            "term": 3,
            "leader": 1,
            "commit": 17,
            "applied": 17,
            "last_index": 17,
            "voters": [1, 2, 3],
            "learners": [],
            "followers": {
                "2": {"match": 17, "lag": 0, "state": "replicate"},
                "3": {"match": 12, "lag": 5, "state": "probe"},
            },
        },
        "1": {
            "role": "follower",
            "term": 2,
            "leader": 2,
            "commit": 40,
            "applied": 39,
            "last_index": 41,
            "voters": [1, 2, 3],
            "learners": [4],
        },
        "2": {
            "role": "leader",
            "term": 5,
            "leader": 1,
            "commit": 9,
            "applied": 9,
            "last_index": 9,
            "voters": [1, 3],
            "learners": [],
            "followers": {"3": {"match": 0, "lag": 9, "state": "snapshot"}},
        },
    },
}

SHARDMAP: dict[str, Any] = {
    "epoch": 4,
    "slots": [[0, 8192, 1], [8192, 16384, 2]],
    "replicas": {"1": [2, 1, 3], "2": [1, 3]},
    "nodes": {
        "1": {"peer": "n1:7000", "api": "http://n1:8080", "admin": "", "wire": ""},
        "2": {"peer": "n2:7000", "api": "http://n2:8080", "admin": "", "wire": ""},
        "3": {
            "peer": "n3:7000",
            "api": "https://n3:8080",
            "admin": "https://n3:8081",
            "wire": "n3:7001",
        },
    },
    "leaders": {"1": 2, "2": 1},
}


def test_status_parses_and_serializes_back_unchanged() -> None:
    report = NodeStatus.model_validate(STATUS)
    assert report.to_json() == STATUS
    assert NodeStatus.model_validate(json.loads(json.dumps(report.to_json()))) == report


def test_status_fields_read_as_the_operator_reads_them() -> None:
    report = NodeStatus.model_validate(STATUS)
    assert report.consistency is not None
    assert (report.consistency.mode, report.consistency.max_staleness_ms) == ("bounded", 250)
    assert report.meta is report.groups[META_KEY] and report.meta.is_leader
    assert report.meta.lags() == {2: 0, 3: 5}
    assert sorted(report.shards) == [1, 2]
    one = report.group(1)
    assert one is not None and one.role is GroupRole.FOLLOWER and one.followers is None
    assert (one.applied, one.last_index, one.learners, one.lags()) == (39, 41, [4], {})
    assert report.group(0) is report.meta and report.group(7) is None
    assert group_key(0) == "meta" and group_key(12) == "12"


def test_a_sparse_report_takes_the_defaults_readers_always_assumed() -> None:
    # What an older node (or a test double) may send: no origin, no consistency.
    report = NodeStatus.model_validate(
        {"node": 2, "groups": {"1": {"role": "leader", "followers": {"3": {"lag": 100}}}}}
    )
    assert (report.epoch, report.origin, report.consistency) == (0, None, None)
    g = report.shards[1]
    assert (g.term, g.voters, g.lags()) == (0, [], {3: 100})


def test_a_bad_report_is_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError) as e:
        NodeStatus.model_validate({"node": 1, "groups": {"1": {"role": "boss"}}})
    assert e.value.errors()[0]["loc"] == ("groups", "1", "role")


def test_shardmap_view_round_trips_and_gives_the_map() -> None:
    view = ShardMapView.model_validate(SHARDMAP)
    assert view.to_json() == SHARDMAP
    m = view.shard_map()
    assert m.epoch == 4 and m.shard_of_slot(9000) == 2 and m.replicas[1] == (2, 1, 3)
    assert m.nodes[1] == NodeAddress("n1:7000", "http://n1:8080")
    assert m.nodes[3] == NodeAddress("n3:7000", "https://n3:8080", "https://n3:8081", "n3:7001")
    assert m.nodes[3].admin_url == "https://n3:8081" and m.nodes[1].admin_url == "http://n1:8080"
    assert ShardMap.decode(m.encode()) == m
    assert ShardMapView.of(m, {1: 2, 2: 1}) == view


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_real_nodes_status_and_shardmap_parse_back_unchanged(tmp_path: Path) -> None:
    async def run() -> tuple[dict[str, Any], dict[str, Any]]:
        port = _free_port()
        addr = NodeAddress(f"127.0.0.1:{port}", "http://127.0.0.1:1")
        boot = bootstrap_map({1: addr}, shards=2, replication=1)
        process = assemble(NodeConfig(1, tmp_path, "127.0.0.1", port, boot, fsync=False))
        node = process.node
        await process.start()
        try:
            for _ in range(200):
                if not node.readiness_problems():
                    break
                await asyncio.sleep(0.02)
            return status(node, process.reads).to_json(), shardmap_view(node).to_json()
        finally:
            await process.stop()

    report, view = asyncio.run(run())
    assert NodeStatus.model_validate(report).to_json() == report
    assert ShardMapView.model_validate(view).to_json() == view
    assert NodeStatus.model_validate(report).shards[1].is_leader
