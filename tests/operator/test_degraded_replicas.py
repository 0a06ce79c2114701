"""A corrupt or diverged replica (issue 15) makes the ShardSet Degraded, naming it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from shardset_operator.api.consistency import ReadSetting
from shardset_operator.api.models import ShardSetStatus
from shardset_operator.status.conditions import Observation, compute_status
from shardset_operator.status.consistency import consistency_status
from shardset_operator.status.health import shard_health
from shardset_proto.status import NodeStatus

from .conftest import group, node_report

NOW = datetime(2026, 1, 1, tzinfo=UTC)
VOTERS = [1, 2, 3]


def _reports(
    leader_extra: dict[str, Any], follower_extra: dict[str, Any]
) -> dict[int, NodeStatus | None]:
    return {
        1: node_report(1, {"1": {**group("leader", 2, 1, VOTERS), **leader_extra}}),
        2: node_report(2, {"1": group("follower", 2, 1, VOTERS)}),
        3: node_report(3, {"1": {**group("follower", 2, 1, VOTERS), **follower_extra}}),
    }


def _degraded(reports: dict[int, NodeStatus | None]) -> tuple[str, str, str]:
    want = ReadSetting("linearizable", None)
    obs = Observation(
        generation=1,
        nodes=3,
        ready_nodes=3,
        answered=3,
        shards=shard_health(reports, [1], 3),
        consistency=consistency_status(want, {1: want, 2: want, 3: want}, VOTERS),
        consistency_target="linearizable",
        bootstrap_written=True,
    )
    [c] = [c for c in compute_status(ShardSetStatus(), obs, NOW).conditions if c.type == "Degraded"]
    return c.status, c.reason, c.message


def test_a_replica_outvoted_by_the_consistency_check_degrades_the_shardset() -> None:
    check = {"index": 9, "ok": False, "digests": {"1": "a", "2": "a", "3": "b"}, "mismatched": [3]}
    status, reason, message = _degraded(_reports({"consistency_check": check}, {}))
    assert (status, reason) == ("True", "ReplicasDiverged")
    assert "shard 1" in message and "[3]" in message


def test_a_replica_reporting_itself_corrupt_degrades_the_shardset() -> None:
    status, reason, message = _degraded(_reports({}, {"corrupt": "row checksum mismatch"}))
    assert (status, reason) == ("True", "ReplicasDiverged")
    assert "[3]" in message


def test_a_passed_check_is_healthy() -> None:
    check = {"index": 9, "ok": True, "digests": {"1": "a", "2": "a", "3": "a"}}
    assert _degraded(_reports({"consistency_check": check}, {}))[:2] == (
        "False",
        "AllShardsHealthy",
    )
