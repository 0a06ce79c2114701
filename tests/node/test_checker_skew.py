"""A consistency check is never proposed while a voter could not apply it.

A node from before the checker cannot decode a ComputeChecksum entry and would stop on
it (an entry it cannot apply). During a rolling upgrade, the leader asks every voter
first and checks nothing unless all of them know consistency checks.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from shardset_node.checker import ConsistencyChecker
from shardset_proto.admin import ReplicaDigest
from shardset_proto.errors import ApiError

SHARD = 4


class Peers:
    def __init__(self, answers: dict[int, str]) -> None:
        self.answers = answers  # node -> the error code its replica-digest answers
        self.asked: list[int] = []

    async def call(self, node: int, body: Any, *, timeout: float = 0.0) -> dict[str, Any]:
        assert isinstance(body, ReplicaDigest)
        self.asked.append(node)
        code = self.answers[node]
        raise ApiError(404, code, f"node {node}: {code}")


def _checker(peers: Peers) -> ConsistencyChecker:
    def never(*_: Any) -> None:
        raise AssertionError("a check entry was proposed")

    group = SimpleNamespace(raft=SimpleNamespace(conf=SimpleNamespace(voters={1, 2, 3})),
                            propose=never, machine=None)  # fmt: skip
    node = SimpleNamespace(id=1, leader_group=lambda shard, what: group)
    return ConsistencyChecker(node, peers, interval=0)  # type: ignore[arg-type]


def test_no_check_is_proposed_while_a_voter_is_older_than_the_checker() -> None:
    peers = Peers({2: "no_such_check", 3: "unknown_action"})
    with pytest.raises(ApiError) as refused:
        asyncio.run(_checker(peers).check(SHARD))
    assert refused.value.code == "check_unsupported"
    assert refused.value.extra["voters"] == [3]
    assert sorted(peers.asked) == [2, 3]  # the leader itself is not asked


def test_voters_that_know_checks_let_the_check_go_on() -> None:
    peers = Peers({2: "no_such_check", 3: "no_such_check"})
    with pytest.raises(ApiError) as refused:  # gets past the question to the shard
        asyncio.run(_checker(peers).check(SHARD))
    assert refused.value.code == "not_a_shard"
