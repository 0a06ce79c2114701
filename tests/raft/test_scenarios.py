"""Scenario tests: the Raft paper's figures and the core's documented behaviours."""

from __future__ import annotations

from copy import deepcopy
from dataclasses import replace

import pytest

from shardset_raft import (
    ConfChange,
    ConfChangeRejected,
    ConfChangeType,
    Message,
    MessageType,
    NotLeader,
    ProposalDropped,
    Raft,
    RaftConfig,
    ReadyNotAdvanced,
    Role,
)
from shardset_sim.harness import Cluster
from shardset_sim.invariants import Violation
from shardset_sim.mutants import CommitAnyTerm, IgnoresLostTail

PLAIN = RaftConfig(id=1, pre_vote=False, check_quorum=False)


def test_three_nodes_elect_replicate_and_apply() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    assert c.leader() == 1
    c.node(1).propose(b"x")
    c.deliver()
    c.tick_all()  # the next heartbeat carries the commit index to the followers
    for i in (1, 2, 3):
        assert c.applied[i][-1] == b"x"


def test_figure_7_leader_brings_every_follower_to_its_log() -> None:
    # Raft paper, Figure 7: the leader of term 8 and followers (a)-(f) with missing,
    # extra and conflicting entries. Node 1 is the leader, 2..7 are (a)..(f).
    logs = {
        1: [1, 1, 1, 4, 4, 5, 5, 6, 6, 6],
        2: [1, 1, 1, 4, 4, 5, 5, 6, 6],
        3: [1, 1, 1, 4],
        4: [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
        5: [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
        6: [1, 1, 1, 4, 4, 4, 4],
        7: [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
    }
    c = Cluster.with_logs(logs, term=7, config=PLAIN)
    c.elect(1)
    assert c.leader() == 1 and c.node(1).term == 8
    c.tick_all(3)
    want = [(e.index, e.term, e.data) for e in c.node(1).log.entries]
    assert [t for _, t, _ in want] == [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 8]
    for i in logs:
        got = [(e.index, e.term, e.data) for e in c.node(i).log.entries]
        assert got == want, f"node {i} did not converge"
        assert c.node(i).committed == 11


def _figure_8(raft_class: type) -> Cluster:
    """Raft paper, Figure 8, on three nodes with one entry per append.

    S1 leads term 1 and appends X that reaches nobody. S3 wins term 2 with S2's
    vote; its no-op reaches nobody. S1 returns and wins term 3, copies X to S2
    (a majority now holds X, an entry of term 1) but its own no-op never reaches
    S2. S1 dies; S3 can win again with S2's vote (its last term 2 beats S2's 1)
    and would overwrite X. Committing X by counting replicas would lose it.
    """
    c = Cluster(
        [1, 2, 3],
        raft_class=raft_class,
        config=RaftConfig(id=1, pre_vote=False, check_quorum=False, max_entries_per_msg=1),
    )
    c.elect(1)
    c.isolate(1)
    c.node(1).propose(b"X")
    c.deliver()
    c.crash(1)
    c.heal()
    c.elect(3, keep=lambda m: m.type != MessageType.APPEND)
    assert c.leader() == 3
    c.crash(3)
    c.start(1)

    def hold_new_term(m: object) -> bool:
        s1, s2 = c.node(1), c.node(2)
        return not (
            m.type == MessageType.APPEND
            and m.to == 2  # type: ignore[attr-defined]
            and any(e.term == s1.term for e in m.entries)  # type: ignore[attr-defined]
            and s2.log.match_term(m.index, m.log_term)  # type: ignore[attr-defined]
        )

    while c.leader() != 1:
        c.elect(1, keep=hold_new_term)
    for _ in range(5):
        c.node(1).tick()
        c.deliver(hold_new_term)
    c.crash(1)
    c.start(3)
    while c.leader() != 3:
        c.elect(3)
    return c


def test_figure_8_old_term_entries_are_not_committed_by_counting() -> None:
    c = _figure_8(Raft)
    # X was never committed, so S3 may overwrite it: no safety property is broken.
    assert all(b"X" not in c.applied[i] for i in (2, 3))
    assert c.node(2).log.term(2) == 2


def test_figure_8_mutant_that_counts_old_terms_is_caught() -> None:
    with pytest.raises(Violation, match="leader-completeness"):
        _figure_8(CommitAnyTerm)


def test_prevote_keeps_a_returning_partitioned_node_from_disrupting() -> None:
    c = Cluster([1, 2, 3], config=RaftConfig(id=1, pre_vote=True, check_quorum=True))
    c.elect(1)
    term = c.node(1).term
    c.isolate(3)
    c.tick_all(60)  # node 3 times out again and again, alone
    assert c.node(3).term == term  # pre-votes failed; its term never moved
    c.heal()
    c.tick_all(30)
    assert c.leader() == 1 and c.node(1).term == term


def test_without_prevote_a_returning_node_forces_a_new_term() -> None:
    c = Cluster([1, 2, 3], config=PLAIN)
    c.elect(1)
    term = c.node(1).term
    c.isolate(3)
    for _ in range(60):
        c.node(3).tick()
    c.heal()
    c.tick_all(3)
    assert c.node(1).term > term  # the disruption PreVote exists to prevent


def test_check_quorum_leader_steps_down_when_it_loses_its_majority() -> None:
    c = Cluster([1, 2, 3], config=RaftConfig(id=1, pre_vote=True, check_quorum=True))
    c.elect(1)
    c.isolate(1)
    for _ in range(2 * c.node(1).cfg.election_tick):
        c.node(1).tick()
        c.deliver()
    assert c.node(1).role == Role.FOLLOWER


def test_leadership_transfer_waits_for_catch_up_and_refuses_proposals() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.node(1).propose(b"a")
    c.deliver()
    c.node(1).transfer_leadership(3)
    with pytest.raises(ProposalDropped):
        c.node(1).propose(b"b")
    c.deliver()
    assert c.leader() == 3
    with pytest.raises(NotLeader) as err:
        c.node(1).propose(b"c")
    assert err.value.leader in (0, 3)


def test_learner_catches_up_before_promotion_then_votes() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    for n in range(30):
        c.node(1).propose(f"e{n}".encode())
    c.deliver()
    c.start(4)  # an empty node: no log, no membership
    c.node(1).propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    assert 4 in c.node(1).conf.learners
    # Promotion before the learner has caught up is refused.
    c.deliver(keep=lambda m: m.to != 4)
    with pytest.raises(ConfChangeRejected, match=r"caught up|not committed"):
        c.node(1).propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, 4))
    c.tick_all(3)
    assert c.node(4).log.last_index() == c.node(1).log.last_index()
    assert c.node(4).role == Role.FOLLOWER and not c.node(4).promotable()
    c.node(1).propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, 4))
    c.tick_all(3)
    assert c.node(4).promotable() and 4 in c.node(1).conf.voters


def test_one_membership_change_at_a_time_and_never_the_leader_itself() -> None:
    c = Cluster([1, 2, 3], config=RaftConfig(id=1, pre_vote=True, check_quorum=True))
    c.elect(1)
    term = c.node(1).term
    c.node(1).propose_conf_change(ConfChange(ConfChangeType.REMOVE, 3))
    with pytest.raises(ConfChangeRejected, match="not committed"):
        c.node(1).propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    c.deliver()
    c.tick_all()
    assert c.node(1).conf.voters == {1, 2}
    with pytest.raises(ConfChangeRejected, match="transfer"):
        c.node(1).propose_conf_change(ConfChange(ConfChangeType.REMOVE, 1))
    # The removed node never learns of its removal (the leader stopped sending to it
    # at once), so it times out; PreVote and the others' leader lease keep it from
    # disrupting the cluster (thesis 4.2.3).
    c.tick_all(100)
    assert c.leader() == 1 and c.node(1).term == term
    assert c.node(3).term == term


def test_a_removed_node_cannot_depose_the_leader_even_without_prevote() -> None:
    # Without PreVote or CheckQuorum the removed node's terms do climb, but the
    # others heard from their leader within the election timeout and ignore its
    # vote requests (thesis 4.2.3), so the leader keeps its term.
    c = Cluster([1, 2, 3], config=PLAIN)
    c.elect(1)
    term = c.node(1).term
    c.node(1).propose_conf_change(ConfChange(ConfChangeType.REMOVE, 3))
    c.deliver()
    c.tick_all()
    assert c.node(1).conf.voters == {1, 2}
    c.tick_all(100)
    assert c.node(3).term > term  # it campaigned, again and again
    assert c.leader() == 1 and c.node(1).term == term and c.node(2).term == term


def test_a_follower_that_lost_its_leader_grants_votes_again() -> None:
    c = Cluster([1, 2, 3], config=PLAIN)
    c.elect(1)
    c.crash(1)
    c.elect(2)  # ticks_since_leader on 3 passes the election timeout first
    assert c.leader() == 2


def test_a_follower_that_lost_acknowledged_entries_gets_them_back_without_writes() -> None:
    # A corrupt WAL tail cut at restart takes entries the follower had acknowledged.
    # The leader must notice from heartbeats alone (no new writes) and resend them.
    c = Cluster([1, 2, 3])
    c.elect(1)
    for data in (b"a", b"b", b"c"):
        c.node(1).propose(data)
    c.deliver()
    c.tick_all()
    last = c.node(1).log.last_index()
    assert c.node(1).progress[3].match == last
    c.crash(3)
    disk = c.disks[3]
    disk.entries = disk.entries[:-2]
    kept = disk.entries[-1].index
    disk.hard_state = replace(disk.hard_state, commit=min(disk.hard_state.commit, kept))
    c.start(3)
    assert c.node(3).log.last_index() == kept < last
    c.tick_all(c.node(1).cfg.heartbeat_tick * 3)
    assert c.node(3).log.last_index() == last
    assert c.node(1).progress[3].match == last


def test_lagging_follower_is_sent_a_snapshot_after_compaction() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.crash(3)
    for n in range(20):
        c.node(1).propose(f"e{n}".encode())
        c.deliver()
    c.tick_all()
    leader = c.node(1)
    snap = leader.compact(leader.applied, b"state-at-%d" % leader.applied)
    c.start(3)
    c.tick_all(10)  # the leader's pipeline to 3 stalls, it probes, finds the gap
    follower = c.node(3)
    assert c.disks[3].snapshot.data == snap.data
    assert follower.log.meta.index == snap.meta.index
    assert follower.committed == leader.committed


def test_read_index_needs_a_heartbeat_round_acknowledged_by_a_majority() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.tick_all()
    c.isolate(1)
    c.node(1).read_index(7)
    c.deliver()
    assert 7 not in c.reads[1]  # no majority has confirmed the leadership yet
    c.heal()
    c.node(1).tick()  # the next heartbeat round reaches the followers
    c.deliver()
    assert c.reads[1] == [7]


def test_lease_read_is_served_at_once_and_stops_when_the_lease_lapses() -> None:
    cfg = RaftConfig(id=1, check_quorum=True, lease_reads=True, max_clock_drift_ticks=2)
    c = Cluster([1, 2, 3], config=cfg)
    c.elect(1)
    c.tick_all(2)
    c.node(1).read_index(1)
    c.process()
    assert c.reads[1] == [1]  # no round trip
    c.isolate(1)
    for _ in range(cfg.election_tick):
        c.node(1).tick()
        c.deliver()
    assert not c.node(1).lease_valid()
    if c.node(1).role == Role.LEADER:
        c.node(1).read_index(2)
        c.deliver()
        assert 2 not in c.reads[1]


def test_each_read_chooses_lease_or_heartbeat_round() -> None:
    cfg = RaftConfig(id=1, check_quorum=True, lease_reads=True, max_clock_drift_ticks=2)
    c = Cluster([1, 2, 3], config=cfg)
    c.elect(1)
    c.tick_all(2)
    assert c.node(1).lease_valid()
    c.node(1).read_index(1, use_lease=False)
    c.process()
    assert 1 not in c.reads[1]  # asked for a round trip even though a lease is held
    c.node(1).read_index(2, use_lease=True)
    c.process()
    assert 2 in c.reads[1] and 1 not in c.reads[1]
    c.node(1).tick()  # the heartbeat round that confirms read 1
    c.deliver()
    assert 1 in c.reads[1]


def test_ready_must_be_advanced_before_more_input() -> None:
    c = Cluster([1])
    raft = c.node(1)
    rd = raft.ready()
    with pytest.raises(ReadyNotAdvanced):
        raft.tick()
    raft.advance(rd)
    raft.tick()


def test_messages_leave_only_through_ready_after_the_state_they_need() -> None:
    c = Cluster([1, 2, 3], config=PLAIN)
    raft = c.node(1)
    for _ in range(3 * raft.cfg.election_tick):
        raft.tick()
    rd = raft.ready()
    votes = [m for m in rd.messages if m.type == MessageType.VOTE]
    assert votes and rd.hard_state is not None
    # The vote for itself and the new term are in the same Ready as the requests:
    # they are persisted before the requests may be sent.
    assert rd.hard_state.vote == 1 and rd.hard_state.term == votes[0].term
    raft.advance(rd)


# ---------------------------------------------------------------- lost log tails
# A node whose storage cut a damaged log tail cannot tell a torn unsynced write from
# synced entries the disk lost (issue 15; Protocol-Aware Recovery, FAST 2018).


def _lost_acknowledged_tail(raft_class: type[Raft] = Raft) -> Cluster:
    """Leader 1 commits a and b with node 2 only (3 is cut off and lags); 2's disk
    then loses them and 1 dies: only 2's vote could elect 3, which lacks a and b."""
    c = Cluster([1, 2, 3], raft_class=raft_class)
    c.elect(1)
    c.isolate(3)
    for data in (b"a", b"b"):
        c.node(1).propose(data)
    c.deliver()
    c.tick_all()
    assert c.node(1).committed == c.node(1).log.last_index()
    c.crash(2)
    lost_upto = c.disks[2].lose_tail(2)
    c.crash(1)
    c.heal()
    c.start(2)
    assert c.disks[2].hard_state.recovering == lost_upto
    return c


def test_a_node_that_lost_its_tail_abstains_so_committed_entries_survive() -> None:
    c = _lost_acknowledged_tail()
    c.elect(3)
    assert c.leader() is None  # 2 abstains: no majority without the entries
    c.start(1)
    for _ in range(3):  # 3's failed campaign may have raised the term: try again
        if c.leader() != 1:
            c.elect(1)
    assert c.leader() == 1
    c.node(1).propose(b"c")
    c.deliver()
    c.tick_all(3)
    assert [d for d in c.applied[2] if d] == [b"a", b"b", b"c"]
    # Caught up past what it lost from a leader: it votes and counts again, durably.
    assert c.node(2).recovering == 0 and c.disks[2].hard_state.recovering == 0
    assert c.node(2).log.last_index() == c.node(1).log.last_index()


def test_a_node_that_forgets_its_cut_tail_elects_a_leader_without_committed_entries() -> None:
    with pytest.raises(Violation, match="leader-completeness"):
        c = _lost_acknowledged_tail(IgnoresLostTail)
        c.elect(3)


def test_a_recovering_node_grants_no_votes_and_its_acks_do_not_commit() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.crash(3)
    # The node's WAL bounds what it lost from the bytes it cut: conservatively high.
    upto = c.disks[3].lose_tail(1) + 3
    c.disks[3].hard_state = replace(c.disks[3].hard_state, recovering=upto)
    c.start(3)
    c.crash(2)
    c.node(1).propose(b"x")
    c.deliver()
    c.tick_all(2)
    # 3 holds x like the leader, but it is recovering: x is not committed by its ack.
    assert c.node(3).log.last_index() == c.node(1).log.last_index()
    assert c.node(1).committed < c.node(1).log.last_index()
    assert c.node(1).progress[3].recovering
    c.start(2)
    c.tick_all(c.node(1).cfg.election_tick)  # the stalled pipeline to 2 probes again
    assert c.node(1).committed == c.node(1).log.last_index() < upto
    assert c.node(3).recovering == upto
    for data in (b"y", b"z", b"w"):
        c.node(1).propose(data)
    c.deliver()
    c.tick_all(2)
    assert c.node(1).committed >= upto
    assert c.node(3).recovering == 0 and not c.node(1).progress[3].recovering


def test_an_old_leader_whose_newer_records_were_lost_converges_and_commits_nothing_stale() -> None:
    # Issue 15 "stuck follower": the old leader 1 holds X of its term; the new leader 2
    # replaces it, 1 acknowledges, then 1's disk loses everything written since. A
    # heartbeat's commit (the leader's stale match for 1) once made 1 commit X, and
    # its "append below my commit" answers then kept the leader probing forever.
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.node(1).propose(b"a")
    c.deliver()
    c.tick_all()
    c.isolate(1)
    c.node(1).propose(b"X")
    c.deliver()
    saved = deepcopy(c.disks[1])
    c.crash(1)
    c.heal()
    c.elect(2)
    c.node(2).propose(b"Y")
    c.deliver()
    c.start(1)
    c.tick_all(3)
    assert c.node(1).log.last_index() == c.node(2).log.last_index()
    assert c.node(2).progress[1].match == c.node(2).log.last_index()
    c.crash(1)
    lost_upto = c.disks[1].entries[-1].index
    c.disks[1] = saved
    c.disks[1].hard_state = replace(saved.hard_state, recovering=lost_upto)
    c.start(1)
    c.tick_all(5)  # the safety checker refuses a stale commit at any step
    assert c.node(1).log.last_index() == c.node(2).log.last_index()
    assert [e.data for e in c.node(1).log.entries] == [e.data for e in c.node(2).log.entries]
    assert c.node(1).committed == c.node(2).committed
    assert c.node(1).recovering == 0
    assert b"X" not in c.applied[1]


def test_a_recovering_follower_on_an_idle_shard_learns_the_commit_from_heartbeats() -> None:
    # Seen with real processes: the append carrying the new commit index never came
    # (the leader had nothing more to send), and heartbeats' commits were ignored.
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.crash(3)
    upto = c.disks[3].lose_tail(1) + 10  # a conservative bound: stays recovering
    c.disks[3].hard_state = replace(c.disks[3].hard_state, recovering=upto)
    c.start(3)
    c.tick_all(3)
    c.node(1).propose(b"x")

    def no_commit_news_for_3(m: Message) -> bool:
        return not (m.type == MessageType.APPEND and m.to == 3 and not m.entries)

    c.deliver(no_commit_news_for_3)
    assert c.node(1).committed == c.node(1).log.last_index() > c.node(3).committed
    c.tick_all(2)  # heartbeats only: no writes
    assert c.node(3).committed == c.node(1).committed and c.node(3).recovering == upto
    assert c.applied[3][-1] == b"x"


def test_a_recovering_follower_with_its_whole_log_but_an_old_commit_catches_up_idle() -> None:
    # Seen with real processes: the cut took only a commit-only hard state of this
    # shard. The leader's match for it was already its last index, so nothing new
    # was ever appended, and a heartbeat's commit alone must not be trusted.
    c = Cluster([1, 2, 3])
    c.elect(1)
    for data in (b"a", b"b"):
        c.node(1).propose(data)
    c.deliver()
    c.tick_all(2)
    last = c.node(1).log.last_index()
    c.crash(3)
    d = c.disks[3]
    d.hard_state = replace(d.hard_state, commit=1, recovering=last + 10)
    c.start(3)
    assert c.node(3).log.last_index() == last == c.node(1).progress[3].match
    c.tick_all(4)  # heartbeats only: no writes
    assert c.node(3).committed == c.node(1).committed == last
    assert c.node(3).recovering == last + 10
