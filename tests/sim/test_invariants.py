"""The safety checker itself: it flags what Raft forbids and nothing Raft allows."""

from __future__ import annotations

import pytest

from shardset_raft import Entry, HardState, Raft, RaftConfig
from shardset_sim.invariants import SafetyChecker, Violation
from shardset_sim.simulator import run_seed


def _raft(node: int, term: int, log_terms: list[int]) -> Raft:
    entries = [Entry(index=i + 1, term=t, data=b"") for i, t in enumerate(log_terms)]
    return Raft(
        RaftConfig(id=node),
        hard_state=HardState(term=term, vote=node, commit=0),
        entries=entries,
    )


def _commit(checker: SafetyChecker, committer: Raft, upto: int) -> None:
    checker.on_commit(committer.id, committer, 0, upto)


def test_a_leader_of_a_later_term_must_hold_every_committed_entry() -> None:
    checker = SafetyChecker()
    _commit(checker, _raft(1, term=7, log_terms=[7]), 1)
    with pytest.raises(Violation, match="leader-completeness"):
        checker.on_leader(2, 8, _raft(2, term=8, log_terms=[4]))
    with pytest.raises(Violation, match="leader-completeness"):
        checker.on_leader(3, 9, _raft(3, term=9, log_terms=[]))


def test_a_late_leader_of_an_earlier_term_may_lack_a_later_commit() -> None:
    # Seed 86113: vote responses of term 4 arrive after a term-7 leader committed its
    # no-op; the term-4 leader is legal (Raft 5.4 speaks of later terms only).
    checker = SafetyChecker()
    _commit(checker, _raft(1, term=7, log_terms=[7]), 1)
    checker.on_leader(2, 4, _raft(2, term=4, log_terms=[4]))
    assert run_seed(86113).violation is None
