"""Property tests of the in-memory log: appends, conflicts, backtracking, compaction."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardset_raft import Compacted, ConfState, Entry, EntryType, Snapshot, SnapshotMeta
from shardset_raft.log import RaftLog

# A log is described by the terms of its entries: non-decreasing, from 1.
term_lists = st.lists(st.integers(1, 4), max_size=12).map(sorted)


def entries(terms: list[int], start: int = 1) -> list[Entry]:
    return [Entry(t, i, EntryType.NORMAL, f"{i}:{t}".encode()) for i, t in enumerate(terms, start)]


def new_log(terms: list[int]) -> RaftLog:
    return RaftLog(Snapshot(), entries(terms), 0)


@given(term_lists, st.integers(0, 12), term_lists)
def test_follower_converges_to_the_leader_by_backtracking(
    leader_t: list[int], shared: int, suffix: list[int]
) -> None:
    """Drive the fast-backtracking protocol by hand: the follower ends equal to the leader.

    The leader's log ends with its new term's no-op (term 20, above every other term),
    as every leader's log does once elected.
    """
    # The follower shares a prefix with the leader, then holds entries of terms the
    # leader never saw (10 and up): logs that obey log matching, as Raft's do.
    follower_t = leader_t[:shared] + [10 + t for t in suffix]
    leader, follower = new_log([*leader_t, 20]), new_log(follower_t)
    nxt = leader.last_index() + 1
    for _ in range(2 * (len(leader_t) + len(follower_t)) + 2):
        prev = nxt - 1
        sent = leader.slice(nxt, leader.last_index() + 1)
        if follower.maybe_append(prev, leader.term(prev), 0, sent) is not None:
            break
        hint, hint_term = follower.find_conflict_by_term(
            min(prev, follower.last_index()), leader.term(prev)
        )
        probe, _ = leader.find_conflict_by_term(hint, hint_term) if hint_term else (hint, 0)
        assert probe < nxt, "backtracking must make progress"
        nxt = max(min(prev, probe + 1), 1)
    assert [(e.index, e.term) for e in follower.entries] == [
        (e.index, e.term) for e in leader.entries
    ]


@given(term_lists, st.integers(0, 12), st.integers(0, 5))
def test_find_conflict_by_term_returns_the_largest_index_at_or_below_term(
    terms: list[int], index: int, term: int
) -> None:
    log = new_log(terms)
    i, t = log.find_conflict_by_term(index, term)
    assert i <= min(index, log.last_index())
    assert t == log.term(i) and t <= term
    for j in range(i + 1, min(index, log.last_index()) + 1):
        assert log.term(j) > term


@given(term_lists, st.integers(0, 12))
def test_append_truncates_a_conflicting_suffix_and_marks_it_unstable(
    terms: list[int], at: int
) -> None:
    log = new_log(terms)
    at = min(at, log.last_index())
    newer = Entry(9, at + 1, EntryType.NORMAL, b"new")
    prev_term = log.term(at)
    assert log.maybe_append(at, prev_term, 0, (newer,)) == at + 1
    assert log.last_index() == at + 1 and log.term(at + 1) == 9
    assert log.unstable_entries()[0].index <= at + 1


def test_a_mismatching_append_is_refused_without_change() -> None:
    log = new_log([1, 1, 2])
    assert log.maybe_append(3, 3, 3, (Entry(3, 4),)) is None
    assert log.last_index() == 3 and log.committed == 0


def test_committed_entries_are_never_truncated() -> None:
    log = new_log([1, 1, 2])
    log.commit_to(3)
    with pytest.raises(AssertionError, match="below commit"):
        log.maybe_append(1, 1, 0, (Entry(5, 2),))


@given(term_lists.filter(lambda t: len(t) >= 2), st.data())
def test_compaction_keeps_terms_and_membership_answerable(
    terms: list[int], data: st.DataObject
) -> None:
    log = new_log(terms)
    log.commit_to(log.last_index())
    log.applied = log.last_index()
    at = data.draw(st.integers(1, log.last_index()))
    term_at = log.term(at)
    snap = log.compact(at, b"state")
    assert snap.meta == SnapshotMeta(at, term_at, ConfState())
    assert log.term(at) == term_at and log.first_index() == at + 1
    if at > 1:
        with pytest.raises(Compacted):
            log.term(at - 1)


def test_membership_is_the_newest_conf_entry_even_uncommitted() -> None:
    base = ConfState(frozenset({1, 2, 3}))
    log = RaftLog(Snapshot(SnapshotMeta(0, 0, base)), [], 0)
    grown = ConfState(frozenset({1, 2, 3}), frozenset({4}))
    log.append([Entry(1, 1), Entry(1, 2, EntryType.CONF, grown.encode())])
    assert log.conf() == grown and log.conf_at(1) == base
    # A new leader overwrites the uncommitted change: the old membership is back.
    log.maybe_append(1, 1, 0, (Entry(2, 2),))
    assert log.conf() == base


@given(st.frozensets(st.integers(1, 50)), st.frozensets(st.integers(51, 99)))
def test_conf_state_round_trips(voters: frozenset[int], learners: frozenset[int]) -> None:
    conf = ConfState(voters, learners)
    assert ConfState.decode(conf.encode()) == conf
