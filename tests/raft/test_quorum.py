"""Property tests of the majority arithmetic."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shardset_raft.quorum import VoteResult, committed_index, majority, vote_result

voter_sets = st.frozensets(st.integers(1, 9), min_size=1, max_size=7)


@given(st.integers(1, 100))
def test_two_majorities_always_overlap(n: int) -> None:
    assert 2 * majority(n) > n
    assert majority(n) <= n


@given(voter_sets, st.data())
def test_committed_index_is_held_by_a_majority_and_is_the_highest_such(
    voters: frozenset[int], data: st.DataObject
) -> None:
    match = {v: data.draw(st.integers(0, 20)) for v in voters}
    c = committed_index(voters, match)
    holders = [v for v in voters if match[v] >= c]
    assert len(holders) >= majority(len(voters))
    above = [v for v in voters if match[v] >= c + 1]
    assert len(above) < majority(len(voters))


@given(voter_sets, st.data())
def test_non_voters_never_count(voters: frozenset[int], data: st.DataObject) -> None:
    match = {v: data.draw(st.integers(0, 20)) for v in voters}
    outsider = max(voters) + 1
    assert committed_index(voters, {**match, outsider: 10**6}) == committed_index(voters, match)
    votes = {outsider: True}
    assert vote_result(voters, votes) in (VoteResult.PENDING, VoteResult.LOST)


@given(voter_sets, st.data())
def test_vote_result_is_decided_only_by_a_majority(
    voters: frozenset[int], data: st.DataObject
) -> None:
    votes = {v: data.draw(st.sampled_from([True, False, None])) for v in voters}
    cast = {v: b for v, b in votes.items() if b is not None}
    granted = sum(cast.values())
    rejected = len(cast) - granted
    result = vote_result(voters, cast)
    need = majority(len(voters))
    assert (result is VoteResult.WON) == (granted >= need)
    assert (result is VoteResult.LOST) == (granted < need and len(voters) - rejected < need)


def test_empty_configuration_commits_nothing() -> None:
    assert committed_index(frozenset(), {1: 5}) == 0
