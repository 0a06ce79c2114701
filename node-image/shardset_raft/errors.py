"""Named errors of the Raft core, so callers can react to each precisely."""


class RaftError(Exception):
    """Base class of every error the core raises."""


class NotLeader(RaftError):
    """The request needs the leader; `leader` is the best-known leader (0 if unknown)."""

    def __init__(self, leader: int) -> None:
        super().__init__(f"not the leader (leader hint: {leader or 'unknown'})")
        self.leader = leader


class ProposalDropped(RaftError):
    """The leader cannot take proposals now (leadership transfer in progress)."""


class ConfChangeRejected(RaftError):
    """A membership change that would be unsafe or is malformed."""


class ReadyNotAdvanced(RaftError):
    """Input arrived between ready() and advance(): the ordering contract was broken."""


class Compacted(RaftError):
    """The requested log position was discarded by compaction."""


class Unavailable(RaftError):
    """The requested log position is not in the log yet."""
