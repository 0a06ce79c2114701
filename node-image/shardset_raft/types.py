"""Value types that cross the boundary of the sans-I/O Raft core.

Everything here is an immutable (or treated-as-immutable) value: the core never
shares mutable state with its caller. Storage, transport and clocks live
outside; they exchange these values with :class:`shardset_raft.raft.Raft`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

NodeId = int


class Role(IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


class EntryType(IntEnum):
    NORMAL = 0
    CONF = 1  # data is an encoded ConfState: the full membership after the change


class MessageType(IntEnum):
    APPEND = 1
    APPEND_RESP = 2
    VOTE = 3
    VOTE_RESP = 4
    PRE_VOTE = 5
    PRE_VOTE_RESP = 6
    HEARTBEAT = 7
    HEARTBEAT_RESP = 8
    SNAPSHOT = 9
    TIMEOUT_NOW = 10


@dataclass(frozen=True, slots=True)
class Entry:
    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class ConfState:
    """A whole membership: voters count toward quorums, learners only replicate."""

    voters: frozenset[NodeId] = frozenset()
    learners: frozenset[NodeId] = frozenset()

    def members(self) -> frozenset[NodeId]:
        return self.voters | self.learners

    def encode(self) -> bytes:
        voters = ",".join(str(v) for v in sorted(self.voters))
        learners = ",".join(str(v) for v in sorted(self.learners))
        return f"{voters};{learners}".encode("ascii")

    @staticmethod
    def decode(data: bytes) -> ConfState:
        voters, _, learners = data.decode("ascii").partition(";")

        def ids(text: str) -> frozenset[NodeId]:
            return frozenset(int(x) for x in text.split(",") if x)

        return ConfState(ids(voters), ids(learners))


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be on stable storage before any message that depends on it leaves."""

    term: int = 0
    vote: NodeId = 0  # 0 means "voted for nobody in this term"
    commit: int = 0
    # Nonzero after storage cut a damaged log tail: the node may have held (and
    # acknowledged) entries up to this index that it lost. It abstains from votes
    # and its acks do not count toward commitment until a leader has caught it up
    # and committed past it (Protocol-Aware Recovery; see Raft.recovering).
    recovering: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: int = 0
    term: int = 0
    conf: ConfState = field(default_factory=ConfState)


@dataclass(frozen=True, slots=True)
class Snapshot:
    meta: SnapshotMeta = field(default_factory=SnapshotMeta)
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class Message:
    type: MessageType
    to: NodeId
    frm: NodeId
    term: int
    log_term: int = 0  # APPEND: term of the entry at `index`; votes: last log term
    index: int = 0  # APPEND: index preceding `entries`; votes: last log index
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0  # APPEND_RESP rejection: follower's probe hint (fast backtracking)
    context: int = 0  # HEARTBEAT(_RESP): the ReadIndex round it confirms
    snapshot: Snapshot | None = None


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state, reported when it changes; never persisted."""

    leader: NodeId
    role: Role
    term: int


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the state machine has applied `index`."""

    index: int
    request: int


@dataclass(frozen=True, slots=True)
class Ready:
    """One batch of work for the caller, handled strictly in this order:

    1. persist ``snapshot`` (if any), then ``entries`` (truncating the stored log at
       the first entry's index), then ``hard_state`` (if any), durably;
    2. only then send ``messages``;
    3. apply ``committed_entries`` in order and serve ``read_states`` once applied;
    4. call :meth:`Raft.advance` with this Ready.

    The core refuses any other input between ``ready()`` and ``advance()``, so a
    message can never leave before the state it vouches for is on disk.
    """

    hard_state: HardState | None
    soft_state: SoftState | None
    entries: tuple[Entry, ...]
    snapshot: Snapshot | None
    committed_entries: tuple[Entry, ...]
    messages: tuple[Message, ...]
    read_states: tuple[ReadState, ...]

    def empty(self) -> bool:
        return (
            self.hard_state is None
            and self.soft_state is None
            and not self.entries
            and self.snapshot is None
            and not self.committed_entries
            and not self.messages
            and not self.read_states
        )
