"""Shardset's Raft core: a pure, sans-I/O state machine (see raft.py for the contract)."""

from shardset_raft.confchange import ConfChange, ConfChangeType
from shardset_raft.errors import (
    Compacted,
    ConfChangeRejected,
    NotLeader,
    ProposalDropped,
    RaftError,
    ReadyNotAdvanced,
    Unavailable,
)
from shardset_raft.raft import Raft, RaftConfig
from shardset_raft.types import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    NodeId,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
)

__all__ = [
    "Compacted",
    "ConfChange",
    "ConfChangeRejected",
    "ConfChangeType",
    "ConfState",
    "Entry",
    "EntryType",
    "HardState",
    "Message",
    "MessageType",
    "NodeId",
    "NotLeader",
    "ProposalDropped",
    "Raft",
    "RaftConfig",
    "RaftError",
    "ReadState",
    "Ready",
    "ReadyNotAdvanced",
    "Role",
    "Snapshot",
    "SnapshotMeta",
    "SoftState",
    "Unavailable",
]
