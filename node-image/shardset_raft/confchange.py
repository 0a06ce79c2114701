"""Single-server membership changes (Raft thesis 4.1).

Each change adds or removes at most one voter, so any majority of the old
voters overlaps any majority of the new ones; with one change in flight at a
time and the leader's no-op committed first (the fix to the single-server
corner case, raft-dev 2015), no two leaders can be elected in one term.
Entries carry the whole resulting membership, so a node that never saw the
initial configuration still learns the full set from the log.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from shardset_raft.errors import ConfChangeRejected
from shardset_raft.types import ConfState, NodeId


class ConfChangeType(IntEnum):
    ADD_VOTER = 0  # also promotes a learner
    ADD_LEARNER = 1
    REMOVE = 2


@dataclass(frozen=True, slots=True)
class ConfChange:
    type: ConfChangeType
    node: NodeId


def apply_change(conf: ConfState, change: ConfChange) -> ConfState | None:
    """The membership after `change`, or None if it is already in force (idempotent)."""
    node = change.node
    if node <= 0:
        raise ConfChangeRejected(f"node id must be positive, got {node}")
    if change.type == ConfChangeType.ADD_VOTER:
        if node in conf.voters:
            return None
        return ConfState(conf.voters | {node}, conf.learners - {node})
    if change.type == ConfChangeType.ADD_LEARNER:
        if node in conf.learners:
            return None
        if node in conf.voters:
            raise ConfChangeRejected(
                f"node {node} is a voter; demotion to learner is not supported"
            )
        return ConfState(conf.voters, conf.learners | {node})
    if node not in conf.members():
        return None
    if conf.voters == {node}:
        raise ConfChangeRejected(f"removing node {node} would leave no voters")
    return ConfState(conf.voters - {node}, conf.learners - {node})
