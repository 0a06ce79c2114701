"""A follower's bounded read claims the staleness it proved, never a later reading.

Under load the claim was read from the clock a second time, after the check that proved
the bound, and a 200 ms read claimed 201 ms. Here a clock that moves 93.75 ms (exact in
binary) at every reading makes any second reading visible: the follower asks the leader
for a read index at one reading, proves 187.5 ms two readings later, and must claim that,
not the 281.25 ms a further reading would give.
"""

from __future__ import annotations

import asyncio
import itertools
from types import SimpleNamespace
from typing import Any

import pytest

from shardset_node import reads as reads_module
from shardset_node.consistency import ReadPolicy
from shardset_node.reads import ReadPath
from shardset_raft import Role

LEADER, ME, SHARD, INDEX = 1, 2, 5, 40


class Peers:
    async def call(self, node: int, body: Any, *, timeout: float) -> dict[str, Any]:
        assert node == LEADER
        return {"index": INDEX}


def follower_path() -> ReadPath:
    raft = SimpleNamespace(role=Role.FOLLOWER, applied=INDEX, leader=LEADER)
    group = SimpleNamespace(id=SHARD, raft=raft)
    node = SimpleNamespace(
        id=ME,
        group_for_key=lambda key, path: group,
        engine=SimpleNamespace(get=lambda shard, key: b"v", applied_index=lambda shard: INDEX),
        meta=SimpleNamespace(map=SimpleNamespace(epoch=3, nodes={LEADER: None, ME: None})),
    )
    return ReadPath(node, Peers(), ReadPolicy())  # type: ignore[arg-type]


def test_the_claimed_staleness_is_the_proven_one(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = itertools.count()
    monkeypatch.setattr(reads_module, "clock", lambda: next(ticks) * 0.09375)
    answer = asyncio.run(follower_path().get(b"k", "bounded", 200, 0, "/v1/kv/k"))
    assert answer["consistency"] == "bounded"
    assert answer["staleness_ms"] == 187.5
    assert answer["index"] == INDEX
