"""Shared helpers for the operator's unit tests."""

from __future__ import annotations

from typing import Any

from shardset_operator.api.models import ShardSetSpec
from shardset_operator.api.naming import Names
from shardset_proto.status import NodeStatus

NAMES = Names("kv", "prod")


def spec(**fields: Any) -> ShardSetSpec:
    return ShardSetSpec.model_validate(fields)


def node_report(
    node: int, groups: dict[str, dict[str, Any]], mode: str = "linearizable"
) -> NodeStatus:
    """A node's GET /v1/status as it serves it, parsed as the node client does."""
    return NodeStatus.model_validate(
        {
            "node": node,
            "epoch": 1,
            "groups": groups,
            "consistency": {"mode": mode, "maxStalenessMs": None},
        }
    )


def group(role: str, term: int, leader: int, voters: list[int]) -> dict[str, Any]:
    return {"role": role, "term": term, "leader": leader, "voters": voters, "learners": []}
