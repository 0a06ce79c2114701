"""Majority arithmetic, kept apart so it can be property-tested on its own."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from enum import Enum

from shardset_raft.types import NodeId


class VoteResult(Enum):
    PENDING = 0
    WON = 1
    LOST = 2


def majority(voters: int) -> int:
    """Smallest number of voters that forms a quorum (1 for a single voter)."""
    return voters // 2 + 1


def committed_index(voters: Collection[NodeId], match: Mapping[NodeId, int]) -> int:
    """Highest index stored on a majority of voters (absent voters count as 0).

    An empty voter set commits nothing: a configuration without voters cannot decide.
    """
    if not voters:
        return 0
    acked = sorted((match.get(v, 0) for v in voters), reverse=True)
    return acked[majority(len(voters)) - 1]


def vote_result(voters: Collection[NodeId], votes: Mapping[NodeId, bool]) -> VoteResult:
    """WON once a majority granted, LOST once a majority can no longer grant."""
    granted = sum(1 for v in voters if votes.get(v) is True)
    rejected = sum(1 for v in voters if votes.get(v) is False)
    need = majority(len(voters))
    if voters and granted >= need:
        return VoteResult.WON
    if len(voters) - rejected < need:
        return VoteResult.LOST
    return VoteResult.PENDING
