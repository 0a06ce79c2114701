"""Deliberately broken Raft cores: the simulator must catch each of them.

They prove the simulator can fail; tests/sim/test_mutants.py keeps that true.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from shardset_raft import Raft
from shardset_raft.types import Message, MessageType, ReadState


class CommitAnyTerm(Raft):
    """Commits by counting replicas of entries from older terms (Raft paper, Figure 8)."""

    def _maybe_commit(self) -> bool:
        index = self._commit_candidate()
        if index <= self.log.committed:
            return False
        self.log.commit_to(index)
        self._commit_bcast_wanted = True
        return True


class VoteIgnoresLog(Raft):
    """Grants votes without the up-to-date log check (election restriction, 5.4.1)."""

    def _handle_vote_request(self, m: Message) -> None:
        pre = m.type == MessageType.PRE_VOTE
        resp = MessageType.PRE_VOTE_RESP if pre else MessageType.VOTE_RESP
        if self.vote in (0, m.frm) or pre:
            self._send(Message(resp, m.frm, self.id, m.term))
            if not pre:
                self.vote = m.frm
                self.election_elapsed = 0
        else:
            self._send(Message(resp, m.frm, self.id, self.term, reject=True))


class IgnoresLostTail(Raft):
    """Forgets that its storage cut a log tail: votes and counts acks as if whole."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recovering = 0
        self._prev_hard = replace(self._prev_hard, recovering=0)


class ReadWithoutQuorum(Raft):
    """Answers ReadIndex from its own commit index, without confirming leadership."""

    def _queue_read(self, request: int, lease: bool) -> None:
        self._read_states.append(ReadState(self.log.committed, request))


MUTANTS: dict[str, type[Raft]] = {
    "read-without-quorum": ReadWithoutQuorum,
    "commit-any-term": CommitAnyTerm,
    "vote-ignores-log": VoteIgnoresLog,
    "ignores-lost-tail": IgnoresLostTail,
}
