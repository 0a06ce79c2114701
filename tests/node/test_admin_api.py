"""The admin endpoint's answers to requests it must refuse, through the HTTP app of a
node that is assembled but not started: an unknown action is a 404, a bad body a 400
naming the field, never a 500."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from shardset_node.config import NodeConfig
from shardset_node.main import assemble
from shardset_proto.shardmap import NodeAddress, bootstrap_map

ACTIONS_NEEDING_A_SHARD = [
    "transfer-leader",
    "create-replica",
    "add-learner",
    "promote",
    "remove-replica",
    "drop-replica",
    "record-replicas",
    "split-shard",
    "system",
    "map-split",
    "recover-shard",
    "map-recover",
    "read-index",
]


def _post(tmp_path: Path, action: str, body: object) -> tuple[int, dict[str, Any]]:
    boot = bootstrap_map({1: NodeAddress("127.0.0.1:1", "http://127.0.0.1:2")}, 1, 1)
    cfg = NodeConfig(1, tmp_path, "127.0.0.1", 0, boot, fsync=False)

    async def run() -> tuple[int, dict[str, Any]]:
        process = assemble(cfg)
        try:
            async with TestClient(TestServer(process.app())) as client:
                r = await client.post(f"/v1/admin/{action}", json=body)
                return r.status, dict(await r.json())
        finally:
            process.node.engine.close()  # never started: only the engine is open

    return asyncio.run(run())


def test_unknown_action_is_404(tmp_path: Path) -> None:
    status, body = _post(tmp_path, "no-such-action", {})
    assert (status, body["error"]) == (404, "unknown_action")
    assert "no-such-action" in body["message"]


@pytest.mark.parametrize("action", ACTIONS_NEEDING_A_SHARD)
def test_missing_shard_is_400_naming_it(tmp_path: Path, action: str) -> None:
    status, body = _post(tmp_path, action, {})
    assert (status, body["error"], body["field"]) == (400, "missing_field", "shard")
    assert "'shard'" in body["message"]


@pytest.mark.parametrize("action", ["add-node", "remove-node"])
def test_missing_node_is_400_naming_it(tmp_path: Path, action: str) -> None:
    status, body = _post(tmp_path, action, {})
    assert (status, body["error"], body["field"]) == (400, "missing_field", "node")
    assert "'node'" in body["message"]


@pytest.mark.parametrize(
    ("action", "body", "field"),
    [
        ("transfer-leader", {"shard": 1, "to": True}, "to"),
        ("transfer-leader", {"shard": "1", "to": 2}, "shard"),
        ("add-node", {"node": 4, "peer": "", "api": "http://x"}, "peer"),
        ("map-split", {"shard": 1, "new_shard": 2, "start": 0, "end": 5, "voters": []}, "voters"),
        ("recover-shard", {"shard": 1, "new_shard": 2, "voters": [0]}, "voters"),
        ("system", {"shard": 1, "command": {"op": "explode"}}, "command"),
        ("consistency", {"mode": "strong"}, "mode"),
    ],
)
def test_bad_field_is_400_naming_it(
    tmp_path: Path, action: str, body: dict[str, Any], field: str
) -> None:
    status, answer = _post(tmp_path, action, body)
    assert (status, answer["error"]) == (400, "bad_field")
    assert answer["field"].split(".")[0] == field  # "voters.0": the first list item
    assert repr(answer["field"]) in answer["message"]


def test_body_that_is_not_an_object_is_400(tmp_path: Path) -> None:
    status, body = _post(tmp_path, "transfer-leader", [1, 2])
    assert (status, body["error"]) == (400, "bad_json")
