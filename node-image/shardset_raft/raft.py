"""The Raft state machine: ticks, messages and proposals in; a Ready out.

Sans-I/O in the style of etcd-io/raft: no sockets, clocks, threads or disks.
The caller drives it:

    raft.tick()                 # on its own timer
    raft.step(message)          # for every message from a peer
    raft.propose(data)          # on the leader
    rd = raft.ready()           # then, in this order:
    #   persist rd.snapshot, rd.entries, rd.hard_state  (durably)
    #   send rd.messages
    #   apply rd.committed_entries, answer rd.read_states once applied
    raft.advance(rd)

Between ready() and advance() the core refuses input (ReadyNotAdvanced): no
message can be produced from state that has not reached the disk. The leader
counts its own log toward a quorum only in advance(), after its disk write.
"""

from __future__ import annotations

from dataclasses import dataclass

from shardset_raft.confchange import ConfChange, apply_change
from shardset_raft.errors import (
    ConfChangeRejected,
    NotLeader,
    ProposalDropped,
    RaftError,
    ReadyNotAdvanced,
)
from shardset_raft.log import RaftLog
from shardset_raft.progress import Progress, ProgressState
from shardset_raft.quorum import VoteResult, committed_index, vote_result
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

FORCE_CAMPAIGN = 1  # vote context: a leadership transfer, which may break a lease
# APPEND_RESP context: the sender is recovering a lost log tail, so this ack must not
# count toward commitment (it abstains from elections, see Raft.recovering).
RECOVERING_ACK = 1

_FROM_LEADER = (
    MessageType.APPEND,
    MessageType.HEARTBEAT,
    MessageType.SNAPSHOT,
    MessageType.TIMEOUT_NOW,
)


@dataclass(frozen=True, slots=True)
class RaftConfig:
    id: NodeId
    election_tick: int = 10  # followers campaign after [election_tick, 2*election_tick)
    heartbeat_tick: int = 1
    max_inflight: int = 64  # appends in flight per follower (flow control)
    max_entries_per_msg: int = 256  # batching bound of one append
    max_apply_batch: int = 4096
    pre_vote: bool = True
    check_quorum: bool = True
    # Lease reads answer on the leader without a heartbeat round. Safe only if no
    # clock runs more than `max_clock_drift_ticks` per election timeout faster
    # than another's; see docs/architecture.md.
    lease_reads: bool = False
    max_clock_drift_ticks: int = 2
    snapshot_timeout_ticks: int = 50
    seed: int = 0

    def validate(self) -> None:
        if self.id <= 0:
            raise RaftError(f"node id must be positive, got {self.id}")
        if self.heartbeat_tick <= 0 or self.election_tick <= self.heartbeat_tick:
            raise RaftError("election_tick must exceed heartbeat_tick, both positive")
        if self.lease_reads and not self.check_quorum:
            raise RaftError("lease_reads requires check_quorum")
        if self.lease_reads and not 0 <= self.max_clock_drift_ticks < self.election_tick:
            raise RaftError("max_clock_drift_ticks must be in [0, election_tick)")


class _SplitMix64:
    """Deterministic jitter for election timeouts; the core owns no entropy source."""

    def __init__(self, seed: int) -> None:
        self.state = seed & 0xFFFFFFFFFFFFFFFF

    def below(self, n: int) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        return (z ^ (z >> 31)) % n


class Raft:
    def __init__(
        self,
        config: RaftConfig,
        *,
        hard_state: HardState | None = None,
        snapshot: Snapshot | None = None,
        entries: tuple[Entry, ...] | list[Entry] = (),
        bootstrap: ConfState | None = None,
    ) -> None:
        """Start from what storage holds; `bootstrap` seeds an empty store's membership."""
        config.validate()
        self.cfg = config
        self.id = config.id
        hs = hard_state or HardState()
        snap = snapshot or Snapshot()
        fresh = bootstrap is not None and snap.meta.index == 0 and not entries
        if fresh:
            snap = Snapshot(SnapshotMeta(0, 0, bootstrap or ConfState()), b"")
        self.log = RaftLog(snap, entries, hs.commit)
        if fresh:
            # The initial membership is state too: the first Ready persists it.
            self.log.unstable_snapshot = snap
        self.term = hs.term
        self.vote = hs.vote
        self.recovering = hs.recovering
        self._leader_matched = 0  # our log matches the current leader's up to here
        self.role = Role.FOLLOWER
        self.leader: NodeId = 0
        self.conf = self.log.conf()
        self._rng = _SplitMix64(config.seed * 1_000_003 + config.id)
        self._now = 0
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        # A restarted node may have acknowledged a leader's lease just before it
        # crashed, so it refuses votes for one election timeout as if it had heard.
        self.ticks_since_leader = 0
        self.randomized_timeout = config.election_tick
        self.votes: dict[NodeId, bool] = {}
        self.progress: dict[NodeId, Progress] = {}
        self.lead_transferee: NodeId = 0
        self.transfer_elapsed = 0
        self.term_start_index = 0
        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._reads_awaiting_commit: list[tuple[int, bool]] = []
        self._pending_reads: list[tuple[int, int, int]] = []  # (request, index, round)
        self._round = 0  # heartbeat round; confirms reads and extends the lease
        self._round_sent_at: dict[int, int] = {}
        self._acked_round: dict[NodeId, int] = {}
        self._round_wanted = False
        self._lease_until = 0
        self._lease_revoked = False
        self._bcast_wanted = False
        self._commit_bcast_wanted = False
        self._outstanding: Ready | None = None
        self._prev_hard = HardState(self.term, self.vote, self.log.committed, self.recovering)
        self._recover_alone()
        self._prev_soft = SoftState(0, Role.FOLLOWER, self.term)
        self._reset_timeout()

    # ================================================================ public API
    @property
    def committed(self) -> int:
        return self.log.committed

    @property
    def applied(self) -> int:
        return self.log.applied

    def promotable(self) -> bool:
        """May this node campaign? Not while it recovers a lost tail (see below)."""
        return self.id in self.conf.voters and not self.recovering

    # Protocol-Aware Recovery (Alagappan et al., FAST 2018), for a node whose storage
    # cut a damaged log tail at restart. It cannot tell a torn unsynced write from a
    # synced record the disk lost, so it must assume it acknowledged entries up to
    # `recovering` and lost them. Were it to vote, a candidate without those entries
    # could win with its vote and overwrite committed entries; were its new acks to
    # count, a commit quorum could miss every electing quorum (which excludes it).
    # So it neither campaigns nor grants votes or pre-votes, flags its acks
    # RECOVERING_ACK (the leader counts them as 0), and takes no commit index from
    # heartbeats beyond what an append of the current leader matched (their `commit`
    # trusts the leader's `match` for it, stale after the cut: it once made such a
    # node commit an old entry and stick). It is cleared
    # once it holds, from a leader's append or snapshot, a log COMMITTED past
    # `recovering`: committed entries are the same on every node (state machine
    # safety), so by then it holds every committed entry it could have acknowledged.
    # The clearing is in the hard state, so the next Ready persists it. A vote the cut
    # took is covered for the term the node is caught up in (see _maybe_end_recovery);
    # one for a later term could be given twice only if a stale leader of an earlier
    # term still committed past `recovering` (acks from a majority that never moved
    # to the later term). The simulator's lying disks also lose hard states (terms
    # and votes go back) and found no such schedule; no proof covers it here.
    def _recover_alone(self) -> None:
        if self.recovering and self.conf.voters <= {self.id}:
            # A sole voter has nobody to recover from: what it lost is gone, and
            # abstaining would only keep the group leaderless for good.
            self.recovering = 0

    def _maybe_end_recovery(self) -> None:
        if self.recovering and self.log.committed >= self.recovering:
            self.recovering = 0
            if self.vote == 0:
                # The cut may have taken a vote of this term: count it as given to
                # the leader (who holds the term anyway), so none can be given twice.
                self.vote = self.leader

    def tick(self) -> None:
        self._check_input()
        self._now += 1
        if self.role == Role.LEADER:
            self._tick_leader()
        else:
            self._tick_election()

    def propose(self, data: bytes) -> int:
        """Append `data` on the leader; returns its index (not yet committed)."""
        self._check_input()
        self._check_accepting()
        return self._append_new(EntryType.NORMAL, data)

    def propose_conf_change(self, change: ConfChange) -> int | None:
        """Append a membership change; None if it is already in force.

        Refused while a previous change is uncommitted, before the leader has
        committed an entry of its own term, for the leader itself (transfer
        leadership first), and for a learner that has not caught up.
        """
        self._check_input()
        self._check_accepting()
        if self.log.committed < self.term_start_index:
            raise ConfChangeRejected("the leader has not committed an entry of its term yet")
        if self.log.last_conf_index() > self.log.committed:
            raise ConfChangeRejected("a previous membership change is not committed yet")
        if change.node == self.id:
            raise ConfChangeRejected("the leader cannot change its own membership; transfer first")
        new = apply_change(self.conf, change)
        if new is None:
            return None
        if change.node in self.conf.learners and change.node in new.voters:
            pr = self.progress.get(change.node)
            if pr is None or pr.match < self.log.committed:
                raise ConfChangeRejected(
                    f"learner {change.node} has not caught up "
                    f"(match {pr.match if pr else 0} < commit {self.log.committed})"
                )
        return self._append_new(EntryType.CONF, new.encode())

    def transfer_leadership(self, to: NodeId) -> None:
        """Hand leadership to voter `to` once its log is current (thesis 3.10)."""
        self._check_input()
        if self.role != Role.LEADER:
            raise NotLeader(self.leader)
        if to == self.id or to == self.lead_transferee:
            return
        if to not in self.conf.voters:
            raise RaftError(f"cannot transfer leadership to {to}: not a voter")
        self.lead_transferee = to
        self.transfer_elapsed = 0
        if self.progress[to].match == self.log.last_index():
            self._send_timeout_now(to)
        else:
            self._send_append(to)

    def read_index(self, request: int, use_lease: bool | None = None) -> None:
        """Ask for a linearizable read; a ReadState with `request` arrives in a Ready.

        The index is the commit index when the read arrived; it is released once a
        heartbeat round sent after that is acknowledged by a majority (thesis 6.4),
        or at once under a valid lease. Reads wait until the leader has committed
        an entry of its own term, since only then is its commit index current.
        `use_lease` chooses per read (None: `cfg.lease_reads`); a lease is only
        ever held when `cfg.lease_reads` is on, so True falls back to a round.
        """
        self._check_input()
        if self.role != Role.LEADER:
            raise NotLeader(self.leader)
        lease = self.cfg.lease_reads if use_lease is None else use_lease
        if self.log.committed < self.term_start_index:
            self._reads_awaiting_commit.append((request, lease))
            return
        self._queue_read(request, lease)

    def lease_valid(self) -> bool:
        return (
            self.role == Role.LEADER
            and self.cfg.lease_reads
            and not self._lease_revoked
            and self.lead_transferee == 0
            and self._now < self._lease_until
        )

    def compact(self, index: int, data: bytes) -> Snapshot:
        """The state machine captured everything up to `index` (applied) in `data`."""
        self._check_input()
        return self.log.compact(index, data)

    def report_snapshot(self, to: NodeId, ok: bool) -> None:
        """The transport's verdict on a snapshot it streamed to `to`."""
        pr = self.progress.get(to)
        if self.role != Role.LEADER or pr is None or pr.state != ProgressState.SNAPSHOT:
            return
        if not ok:
            pr.pending_snapshot = 0
        pr.become_probe()

    def step(self, m: Message) -> None:
        self._check_input()
        if m.to != self.id:
            return
        if not self._step_term(m):
            return
        if m.type in (MessageType.VOTE, MessageType.PRE_VOTE):
            self._handle_vote_request(m)
        elif self.role == Role.LEADER:
            self._step_leader(m)
        elif self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    def has_ready(self) -> bool:
        return bool(
            self._msgs
            or self._read_states
            or self._round_wanted
            or self._bcast_wanted
            or self._commit_bcast_wanted
            or self.log.unstable_snapshot is not None
            or self.log.stable < self.log.last_index()
            or self.log.committed > self.log.applied
            or self.term != self._prev_hard.term
            or self.vote != self._prev_hard.vote
            or self.log.committed != self._prev_hard.commit
            or self.recovering != self._prev_hard.recovering
            or self.leader != self._prev_soft.leader
            or self.role != self._prev_soft.role
            or self.term != self._prev_soft.term
        )

    def ready(self) -> Ready:
        self._check_input()
        self._flush()
        hs = self._hard_state()
        ss = self._soft_state()
        rd = Ready(
            hard_state=hs if hs != self._prev_hard else None,
            soft_state=ss if ss != self._prev_soft else None,
            entries=self.log.unstable_entries(),
            snapshot=self.log.unstable_snapshot,
            committed_entries=self.log.next_committed(self.cfg.max_apply_batch),
            messages=tuple(self._msgs),
            read_states=tuple(self._read_states),
        )
        self._msgs = []
        self._read_states = []
        self._outstanding = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """The caller persisted, sent and applied `rd` as its docstring orders."""
        if rd is not self._outstanding:
            raise ReadyNotAdvanced("advance() must be given the Ready last returned by ready()")
        self._outstanding = None
        if rd.snapshot is not None:
            self.log.unstable_snapshot = None
        if rd.entries:
            self.log.stable = max(self.log.stable, rd.entries[-1].index)
        if rd.committed_entries:
            self.log.applied = rd.committed_entries[-1].index
        if rd.hard_state is not None:
            self._prev_hard = rd.hard_state
        if rd.soft_state is not None:
            self._prev_soft = rd.soft_state
        if self.role == Role.LEADER and rd.entries:
            # Our own disk write counts toward the quorum only now that it is durable.
            self.progress[self.id].maybe_update(self.log.stable)
            self._maybe_commit()

    # ================================================================ plumbing
    def _check_input(self) -> None:
        if self._outstanding is not None:
            raise ReadyNotAdvanced("input between ready() and advance()")

    def _check_accepting(self) -> None:
        if self.role != Role.LEADER:
            raise NotLeader(self.leader)
        if self.lead_transferee:
            raise ProposalDropped(f"leadership is moving to {self.lead_transferee}")

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed, self.recovering)

    def _soft_state(self) -> SoftState:
        return SoftState(self.leader, self.role, self.term)

    def _send(self, m: Message) -> None:
        self._msgs.append(m)

    def _flush(self) -> None:
        """Turn the work gathered since the last Ready into as few messages as possible."""
        if self.role == Role.LEADER:
            if self._bcast_wanted or self._commit_bcast_wanted:
                for peer in self._peers():
                    self._send_append(peer, send_empty=self._commit_bcast_wanted)
            if self._round_wanted:
                self._broadcast_heartbeat()
        self._bcast_wanted = self._commit_bcast_wanted = self._round_wanted = False

    def _peers(self) -> list[NodeId]:
        return [p for p in sorted(self.conf.members()) if p != self.id]

    def _reset_timeout(self) -> None:
        n = self.cfg.election_tick
        self.randomized_timeout = n + self._rng.below(n)

    # ================================================================ roles
    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = 0
        self.leader = 0
        self._leader_matched = 0
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_timeout()
        self.votes = {}
        self.lead_transferee = 0
        self.progress = {}
        self._reads_awaiting_commit = []
        self._pending_reads = []
        self._round_sent_at = {}
        self._acked_round = {}
        self._lease_until = 0
        self._lease_revoked = False

    def _become_follower(self, term: int, leader: NodeId) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader = leader

    def _become_pre_candidate(self) -> None:
        # Term and vote stay: a pre-vote that fails leaves no trace (thesis 9.6).
        self.role = Role.PRE_CANDIDATE
        self.leader = 0
        self.votes = {}
        self.election_elapsed = 0
        self._reset_timeout()

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader = self.id
        self.ticks_since_leader = 0
        last = self.log.last_index()
        for peer in self.conf.members():
            self.progress[peer] = Progress(next=last + 1)
        me = self.progress.setdefault(self.id, Progress(next=last + 1))
        me.match = self.log.stable
        me.become_replicate()
        me.recent_active = True
        # The no-op of the new term: once it commits, so has everything before it
        # (Figure 8), and membership changes and reads become safe.
        self.term_start_index = self._append_new(EntryType.NORMAL, b"")

    def _campaign(self, pre: bool, force: bool = False) -> None:
        if pre:
            self._become_pre_candidate()
            term, kind = self.term + 1, MessageType.PRE_VOTE
        else:
            self._become_candidate()
            term, kind = self.term, MessageType.VOTE
        self.votes[self.id] = True
        if self._tally() is VoteResult.WON:
            return
        for v in sorted(self.conf.voters):
            if v != self.id:
                self._send(
                    Message(
                        kind,
                        v,
                        self.id,
                        term,
                        log_term=self.log.last_term(),
                        index=self.log.last_index(),
                        context=FORCE_CAMPAIGN if force else 0,
                    )
                )

    def _tally(self) -> VoteResult:
        result = vote_result(self.conf.voters, self.votes)
        if result is VoteResult.WON:
            if self.role == Role.PRE_CANDIDATE:
                self._campaign(pre=False)
            else:
                self._become_leader()
        elif result is VoteResult.LOST:
            self._become_follower(self.term, 0)
        return result

    # ================================================================ ticks
    def _tick_election(self) -> None:
        self.election_elapsed += 1
        self.ticks_since_leader += 1
        if self.promotable() and self.election_elapsed >= self.randomized_timeout:
            self.election_elapsed = 0
            self._campaign(pre=self.cfg.pre_vote)

    def _tick_leader(self) -> None:
        self.ticks_since_leader = 0
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.lead_transferee:
            self.transfer_elapsed += 1
            if self.transfer_elapsed >= self.cfg.election_tick:
                self.lead_transferee = 0
        last = self.log.last_index()
        for peer, pr in self.progress.items():
            if peer == self.id:
                continue
            if pr.state == ProgressState.SNAPSHOT:
                pr.snapshot_elapsed += 1
                if pr.snapshot_elapsed >= self.cfg.snapshot_timeout_ticks:
                    pr.become_probe()  # the snapshot was lost; find the follower again
            elif pr.state == ProgressState.REPLICATE and pr.match < last:
                pr.stall_ticks += 1
                if pr.stall_ticks >= self.cfg.election_tick // 2 + 1:
                    pr.become_probe()  # appends were lost; probe from what matched
                    self._send_append(peer)
        if self.election_elapsed >= self.cfg.election_tick:
            self.election_elapsed = 0
            if self.cfg.check_quorum and not self._quorum_active():
                self._become_follower(self.term, 0)
                return
        if self.heartbeat_elapsed >= self.cfg.heartbeat_tick:
            self.heartbeat_elapsed = 0
            self._broadcast_heartbeat()

    def _quorum_active(self) -> bool:
        """CheckQuorum: did a majority of voters answer in the last election timeout?"""
        active = {p: (p == self.id or pr.recent_active) for p, pr in self.progress.items()}
        for pr in self.progress.values():
            pr.recent_active = False
        return vote_result(self.conf.voters, active) is VoteResult.WON

    # ================================================================ term rules
    def _step_term(self, m: Message) -> bool:
        """Apply Raft's term rules; False if the message must be dropped."""
        if m.term > self.term:
            if m.type in (MessageType.VOTE, MessageType.PRE_VOTE):
                # Thesis 4.2.3, applied with or without CheckQuorum: a server that heard
                # from a live leader within the minimum election timeout ignores vote
                # requests, so a removed or partitioned server cannot keep raising terms
                # and deposing leaders (it starved commits in simulator seed 22091).
                # A restarted node counts as having just heard from a leader (it may
                # have acknowledged a lease before it crashed), so no `leader != 0` test.
                in_lease = self.ticks_since_leader < self.cfg.election_tick
                if in_lease and m.context != FORCE_CAMPAIGN:
                    return False
            if m.type == MessageType.PRE_VOTE:
                return True  # a pre-vote never changes our term
            if m.type == MessageType.PRE_VOTE_RESP and not m.reject:
                return True  # granted pre-votes carry the term we would campaign in
            self._become_follower(m.term, m.frm if m.type in _FROM_LEADER else 0)
            return True
        if m.term < self.term:
            if m.type in (MessageType.APPEND, MessageType.HEARTBEAT):
                # A stale leader returning from a partition: tell it the term moved on.
                self._send(Message(MessageType.APPEND_RESP, m.frm, self.id, self.term))
            elif m.type == MessageType.PRE_VOTE:
                self._send(
                    Message(MessageType.PRE_VOTE_RESP, m.frm, self.id, self.term, reject=True)
                )
            return False
        return True

    def _handle_vote_request(self, m: Message) -> None:
        pre = m.type == MessageType.PRE_VOTE
        resp = MessageType.PRE_VOTE_RESP if pre else MessageType.VOTE_RESP
        can_vote = not self.recovering and (
            self.vote == m.frm
            or (self.vote == 0 and self.leader == 0)
            or (pre and m.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            self._send(Message(resp, m.frm, self.id, m.term))
            if not pre:
                self.vote = m.frm
                self.election_elapsed = 0
        else:
            self._send(Message(resp, m.frm, self.id, self.term, reject=True))

    # ================================================================ followers
    def _step_candidate(self, m: Message) -> None:
        if m.type in _FROM_LEADER:
            self._become_follower(m.term, m.frm)
            self._step_follower(m)
            return
        want = (
            MessageType.PRE_VOTE_RESP if self.role == Role.PRE_CANDIDATE else MessageType.VOTE_RESP
        )
        if m.type == want and m.frm in self.conf.voters:
            self.votes.setdefault(m.frm, not m.reject)
            self._tally()

    def _step_follower(self, m: Message) -> None:
        if m.type in _FROM_LEADER:
            self.leader = m.frm
            self.election_elapsed = 0
            self.ticks_since_leader = 0
        if m.type == MessageType.APPEND:
            self._handle_append(m)
        elif m.type == MessageType.HEARTBEAT:
            # Recovering, it commits only up to what this leader's appends matched, and
            # reports only that much as its log, so that a leader whose `match` for it
            # predates the cut sends an append to verify the rest.
            upto = self._leader_matched if self.recovering else self.log.last_index()
            self.log.commit_to(min(m.commit, upto))
            self._send(
                Message(
                    MessageType.HEARTBEAT_RESP,
                    m.frm,
                    self.id,
                    self.term,
                    index=upto,  # lets the leader see a lost tail
                    context=m.context,
                )
            )
        elif m.type == MessageType.SNAPSHOT:
            self._handle_snapshot(m)
        elif m.type == MessageType.TIMEOUT_NOW and self.promotable():
            self._campaign(pre=False, force=True)

    def _handle_append(self, m: Message) -> None:
        resp, to, me, term = MessageType.APPEND_RESP, m.frm, self.id, self.term
        if m.index < self.log.committed:
            # Committed entries are the same on every node, the leader's included.
            self._leader_matched = max(self._leader_matched, self.log.committed)
            self._send(Message(resp, to, me, term, index=self.log.committed, context=self._ack()))
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        self._refresh_conf()
        if last_new is not None:
            self._leader_matched = max(self._leader_matched, last_new)
            self._maybe_end_recovery()
            self._send(Message(resp, to, me, term, index=last_new, context=self._ack()))
            return
        hint, hint_term = self.log.find_conflict_by_term(
            min(m.index, self.log.last_index()), m.log_term
        )
        self._send(
            Message(
                resp,
                to,
                me,
                term,
                index=m.index,
                reject=True,
                reject_hint=hint,
                log_term=hint_term,
                context=self._ack(),
            )
        )

    def _ack(self) -> int:
        return RECOVERING_ACK if self.recovering else 0

    def _handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        assert snap is not None
        meta = snap.meta
        if meta.index > self.log.committed:
            if self.log.match_term(meta.index, meta.term):
                self.log.commit_to(meta.index)  # we already hold it: just catch up the commit
            else:
                self.log.restore(snap)
                self._refresh_conf()
            self._leader_matched = max(self._leader_matched, meta.index)
        self._maybe_end_recovery()
        index = self.log.last_index() if meta.index > self.log.committed else self.log.committed
        self._send(
            Message(
                MessageType.APPEND_RESP, m.frm, self.id, self.term, index=index, context=self._ack()
            )
        )

    # ================================================================ leader
    def _step_leader(self, m: Message) -> None:
        pr = self.progress.get(m.frm)
        if pr is None:
            return
        if m.type == MessageType.APPEND_RESP:
            pr.recent_active = True
            recovering = m.context == RECOVERING_ACK
            if pr.recovering != recovering:
                pr.recovering = recovering
                self._maybe_commit()  # its acks now count (no lowering: commit stays)
            self._handle_append_resp(m, pr)
        elif m.type == MessageType.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.probe_sent = False
            if m.context > self._acked_round.get(m.frm, 0):
                self._acked_round[m.frm] = m.context
                self._confirm_rounds()
            if m.index < pr.match and pr.state != ProgressState.SNAPSHOT:
                # The follower's log ends below what it acknowledged: it lost synced
                # entries (a corrupt WAL tail cut at restart). A quiet leader would
                # never resend them, so probe from what it has; lowering match is safe.
                pr.match = m.index
                pr.become_probe()
                self._send_append(m.frm)
                return
            # Pipelined appends may be in flight: only a probe is re-sent here; a
            # stalled pipeline falls back to probing in _tick_leader.
            if pr.state == ProgressState.PROBE and pr.match < self.log.last_index():
                self._send_append(m.frm)

    def _handle_append_resp(self, m: Message, pr: Progress) -> None:
        if m.reject:
            hint = m.reject_hint
            if m.log_term > 0:
                hint, _ = self.log.find_conflict_by_term(hint, m.log_term)
            if pr.maybe_decrease_to(m.index, hint):
                if pr.state == ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm)
            return
        was_paused = pr.paused(self.cfg.max_inflight)
        if not pr.maybe_update(m.index):
            if was_paused and not pr.paused(self.cfg.max_inflight):
                self._send_append(m.frm)
            return
        if pr.state == ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state == ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
            pr.become_probe()
            pr.become_replicate()
        if not self._maybe_commit():
            while self._send_append(m.frm, send_empty=False):
                pass
        if m.frm == self.lead_transferee and pr.match == self.log.last_index():
            self._send_timeout_now(m.frm)

    def _commit_candidate(self) -> int:
        """The index a majority of voters stores (only durable copies count)."""
        matches = {p: 0 if pr.recovering else pr.match for p, pr in self.progress.items()}
        return committed_index(self.conf.voters, matches)

    def _maybe_commit(self) -> bool:
        """Commit by counting replicas only in the current term (thesis 3.6.2, Figure 8)."""
        index = self._commit_candidate()
        if index <= self.log.committed or self.log.term(index) != self.term:
            return False
        self.log.commit_to(index)
        self._commit_bcast_wanted = True
        if self._reads_awaiting_commit and index >= self.term_start_index:
            waiting, self._reads_awaiting_commit = self._reads_awaiting_commit, []
            for request, lease in waiting:
                self._queue_read(request, lease)
        return True

    def _append_new(self, kind: EntryType, data: bytes) -> int:
        index = self.log.last_index() + 1
        self.log.append([Entry(self.term, index, kind, data)])
        if kind == EntryType.CONF:
            self._refresh_conf()
        self._bcast_wanted = True
        return index

    def _send_append(self, to: NodeId, send_empty: bool = True) -> bool:
        pr = self.progress[to]
        if pr.paused(self.cfg.max_inflight):
            return False
        prev = pr.next - 1
        if prev < self.log.meta.index:
            return self._send_snapshot(to, pr)
        entries = self.log.slice(pr.next, pr.next + self.cfg.max_entries_per_msg)
        if not entries and not send_empty:
            return False
        self._send(
            Message(
                MessageType.APPEND,
                to,
                self.id,
                self.term,
                log_term=self.log.term(prev),
                index=prev,
                entries=entries,
                commit=self.log.committed,
            )
        )
        if entries:
            pr.sent_entries(entries[-1].index)
        elif pr.state == ProgressState.PROBE:
            pr.probe_sent = True
        return bool(entries)

    def _send_snapshot(self, to: NodeId, pr: Progress) -> bool:
        if not pr.recent_active:
            return False  # don't ship a snapshot to a node that may be gone
        snap = self.log.snapshot
        pr.become_snapshot(snap.meta.index)
        self._send(Message(MessageType.SNAPSHOT, to, self.id, self.term, snapshot=snap))
        return False

    def _send_timeout_now(self, to: NodeId) -> None:
        self._lease_revoked = True  # the transferee may win before our lease would end
        self._send(Message(MessageType.TIMEOUT_NOW, to, self.id, self.term))

    def _broadcast_heartbeat(self) -> None:
        self._round += 1
        self._round_sent_at[self._round] = self._now
        self._acked_round[self.id] = self._round
        for peer in self._peers():
            commit = min(self.progress[peer].match, self.log.committed)
            self._send(
                Message(
                    MessageType.HEARTBEAT,
                    peer,
                    self.id,
                    self.term,
                    commit=commit,
                    context=self._round,
                )
            )
        self._confirm_rounds()

    def _confirm_rounds(self) -> None:
        """Release reads and extend the lease up to the round a majority acknowledged."""
        confirmed = committed_index(self.conf.voters, self._acked_round)
        if confirmed <= 0 or confirmed not in self._round_sent_at:
            return
        sent_at = self._round_sent_at[confirmed]
        for r in [r for r in self._round_sent_at if r < confirmed]:
            del self._round_sent_at[r]
        lease = sent_at + self.cfg.election_tick - self.cfg.max_clock_drift_ticks
        self._lease_until = max(self._lease_until, lease)
        if self._pending_reads and self._pending_reads[0][2] <= confirmed:
            still = []
            for request, index, round_ in self._pending_reads:
                if round_ <= confirmed:
                    self._read_states.append(ReadState(index, request))
                else:
                    still.append((request, index, round_))
            self._pending_reads = still

    def _queue_read(self, request: int, lease: bool) -> None:
        if (lease and self.lease_valid()) or self.conf.voters == {self.id}:
            self._read_states.append(ReadState(self.log.committed, request))
            return
        # Every read queued before the next Ready shares one heartbeat round.
        self._pending_reads.append((request, self.log.committed, self._round + 1))
        self._round_wanted = True

    def _refresh_conf(self) -> None:
        conf = self.log.conf()
        if conf == self.conf:
            return
        self.conf = conf
        if self.role != Role.LEADER:
            return
        last = self.log.last_index()
        for peer in conf.members():
            if peer not in self.progress:
                self.progress[peer] = Progress(next=last + 1, recent_active=True)
        for peer in list(self.progress):
            if peer not in conf.members() and peer != self.id:
                del self.progress[peer]
                self._acked_round.pop(peer, None)
        self._maybe_commit()
