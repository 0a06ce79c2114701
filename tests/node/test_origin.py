"""How a data directory began decides whether its groups may bootstrap: a node whose
Raft log is gone in a store that already exists must rejoin empty, never bootstrap
(its empty log would count as a voter's and could lose acknowledged writes)."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from shardset_node.config import NodeConfig
from shardset_node.core import Node
from shardset_proto.errors import ApiError
from shardset_proto.shardmap import NodeAddress, bootstrap_map


def _config(data: Path, *, store_created: bool) -> NodeConfig:
    # One node, so it elects itself and its groups write their Raft state.
    boot = bootstrap_map({1: NodeAddress("127.0.0.1:1", "127.0.0.1:2")}, 2, 1)
    return NodeConfig(1, data, "127.0.0.1", 0, boot, fsync=False, store_created=store_created)


async def _started(cfg: NodeConfig) -> tuple[str, list[int]]:
    node = Node(cfg)

    async def no_client(*_: object) -> None:
        return None

    await node.start(no_client)
    try:
        async with asyncio.timeout(10):
            while any(g.raft.leader != 1 for g in node.host.groups.values()):
                await asyncio.sleep(0.01)
        return node.origin, sorted(node.host.groups)
    finally:
        await node.stop()
        node.engine.close()


def test_a_bootstrap_node_whose_raft_log_was_lost_rejoins(tmp_path: Path) -> None:
    data = tmp_path / "node-1"
    origin, groups = asyncio.run(_started(_config(data, store_created=False)))
    assert (origin, groups) == ("bootstrap", [0, 1, 2])
    shutil.rmtree(data / "raft")  # the log is lost; origin.json and the engine remain
    origin, groups = asyncio.run(_started(_config(data, store_created=True)))
    assert (origin, groups) == ("rejoin", [])  # hosts and votes in nothing until re-added
    assert json.loads((data / "origin.json").read_text()) == {"origin": "rejoin"}


def test_a_bootstrap_node_with_its_log_keeps_its_groups(tmp_path: Path) -> None:
    data = tmp_path / "node-1"
    asyncio.run(_started(_config(data, store_created=False)))
    origin, groups = asyncio.run(_started(_config(data, store_created=True)))
    assert (origin, groups) == ("bootstrap", [0, 1, 2])


def test_a_rejoined_node_never_redirects_a_client_to_itself(tmp_path: Path) -> None:
    """Until it is rebuilt, a rejoined node is still a holder of its shards in the map
    but hosts none of them: a request for one was redirected to the first holder, which
    could be the node itself, and the client went round in a loop ("node 2 does not
    lead shard 2; node 2 does")."""
    data = tmp_path / "node-1"
    asyncio.run(_started(_config(data, store_created=False)))
    shutil.rmtree(data / "raft")

    async def ask() -> ApiError:
        node = Node(_config(data, store_created=True))

        async def no_client(*_: object) -> None:
            return None

        await node.start(no_client)
        try:
            assert node.origin == "rejoin" and node.meta.map.replicas[1] == (1,)
            with pytest.raises(ApiError) as caught:
                node.group(1, "/v1/kv/k")
            return caught.value
        finally:
            await node.stop()
            node.engine.close()

    err = asyncio.run(ask())
    # Its only holder is itself: no one to send the client to, so a retryable 503.
    assert err.status == 503 and err.code == "no_leader", err
