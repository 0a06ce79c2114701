"""The multi-Raft host loop: every group on the node, one disk sync per round.

Each round: tick the groups whose timer is due, step the messages that
arrived, hand queued client requests to the cores, collect every group's
Ready, stage them all in the shared write-ahead log, make them durable with a
single sync (group commit across shards), then send, apply and advance. While
a sync is in flight, new messages and requests queue up and are batched into
the next round: that is where batching under load comes from.

Failures (issue 15), two kinds:

* **A full disk stalls the loop; nothing is lost and it resumes by itself.** A Ready
  is a promise the core makes only once: between ``ready()`` and ``advance()`` it
  accepts no input, and advance() tells it the Ready is durable (a leader then counts
  its own log toward commitment; a follower's ack promises the entries survive). So a
  round whose stage, sync or apply meets ENOSPC (storage.diskspace.is_disk_full) is
  neither advanced nor acknowledged: its Readies are kept as they are (the WAL keeps
  the refused records buffered, cut back on disk, see WriteAheadLog._write), and the
  host is *stalled*: no group is ticked or stepped (incoming messages are dropped, as
  a lossy network would), every waiting client gets a 507 at once (a write already
  proposed is "may or may not be applied": its entry may still commit through peers
  that hold it), new requests are refused with 507, and eventual reads of the applied
  state are still served. The other replicas elect a new leader after an election
  timeout (a frozen core cannot send a transfer). Every ``DISK_RETRY_INTERVAL`` the
  stalled round is tried again: stage what was not staged, sync, finish; once that
  succeeds the node resumes, replaying the ticks it missed (at most
  MAX_CATCH_UP_TICKS, more than an election timeout) before anything else, so a
  leader's lease from before the stall has expired. Only what a sync made durable
  was ever acknowledged.
* **Anything else ends the loop for good (crash-only).** A committed entry the state
  machine cannot apply (group.ApplyFailed, naming the group and index), a failed
  fsync, a bug: the host records the cause, fails every waiting request and refuses
  new ones (LoopFailed: 503 ``node_failed``), and calls `on_fatal`; the process then
  reports unhealthy and exits non-zero (main.py). Skipping an entry would make this
  replica diverge from the others, so a restart fails the same way until an operator
  rebuilds the replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from shardset_node.replication.group import ApplyFailed, ReplicaGroup
from shardset_node.storage.diskspace import is_disk_full
from shardset_raft import Message, RaftError, Ready, Role

log = structlog.get_logger(__name__)

Sync = Callable[[], Awaitable[None]]
# After an event-loop stall, the ticks that were missed are replayed (up to this many),
# so Raft's tick clock keeps up with real time: a leader that was paused must not go on
# counting a lease (or an election timeout) from before the pause.
MAX_CATCH_UP_TICKS = 40
# While the disk is full, how often the stalled round is tried again (seconds).
DISK_RETRY_INTERVAL = 0.5


class LoopFailed(RaftError):
    """The node's Raft loop stopped for good (see the module docstring)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"the node's Raft loop stopped: {describe(cause)}")
        self.cause = cause


class StorageFull(RaftError):
    """The node's disk is full: the request was refused (or, `proposed`, its entry may
    or may not still be applied through the other replicas)."""

    def __init__(self, reason: str, *, proposed: bool = False) -> None:
        outcome = (
            "the write was proposed before and may or may not be applied (retry with the "
            "same Idempotency-Key)"
            if proposed
            else "nothing was written"
        )
        super().__init__(f"the node's disk is full ({reason}); {outcome}")
        self.proposed = proposed


def describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


@dataclass
class _Unfinished:
    """A group's Ready from a round the disk refused, kept until it can be finished."""

    group: ReplicaGroup
    ready: Ready
    staged: bool = False
    synced: bool = False
    messages_sent: bool = False


@dataclass(frozen=True)
class DiskStall:
    """Why and since when (time.time()) the host is stalled on a full disk."""

    reason: str
    since: float


class RaftHost:
    def __init__(self, sync: Sync, *, tick_interval: float = 0.05) -> None:
        self.sync = sync
        self.tick_interval = tick_interval
        self.groups: dict[int, ReplicaGroup] = {}
        self._inbox: list[tuple[int, Message]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.rounds = 0
        self.syncs = 0
        # Per group, the (term, vote) last made durable: a Ready whose hard state moved
        # only its commit index needs no sync of its own (see _must_sync).
        self._durable_term_vote: dict[int, tuple[int, int]] = {}
        # Failure state (module docstring): the loop's fatal cause, the disk stall.
        self.failure: BaseException | None = None
        self.on_fatal: Callable[[BaseException], None] = lambda _: None
        self.disk_stall: DiskStall | None = None
        self._unfinished: list[_Unfinished] = []
        self._owed_ticks = 0
        self._next_retry = 0.0
        self.dropped_while_stalled = 0
        self.round_started: float | None = None  # time.monotonic() of a round under way

    def add(self, group: ReplicaGroup) -> None:
        group.wake = self._wake.set
        group.refusal = self.refusal
        self.groups[group.id] = group
        self._wake.set()

    def remove(self, group_id: int) -> ReplicaGroup | None:
        return self.groups.pop(group_id, None)

    def deliver(self, from_node: int, items: list[tuple[int, Message]]) -> None:
        """Transport callback: queue messages for the next round."""
        if self.failure is not None:
            return
        self._inbox.extend(items)
        self._wake.set()

    def refusal(self) -> RaftError | None:
        """Why a new request must be refused now, if it must."""
        if self.failure is not None:
            return LoopFailed(self.failure)
        if self.disk_stall is not None:
            return StorageFull(self.disk_stall.reason)
        return None

    def stuck_for(self) -> float:
        """Seconds the round under way has been running (0 between rounds)."""
        started = self.round_started
        return 0.0 if started is None else time.monotonic() - started

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="raft-host")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        next_tick = time.monotonic() + self.tick_interval
        while not self._stopping:
            timeout = max(0.0, next_tick - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            now = time.monotonic()
            ticks = 0
            if now >= next_tick:
                missed = int((now - next_tick) / self.tick_interval)
                ticks = 1 + min(missed, MAX_CATCH_UP_TICKS)
                next_tick += (1 + missed) * self.tick_interval
            self.round_started = now
            try:
                await self._round(ticks)
            except Exception as exc:
                self._die(exc)
                return
            finally:
                self.round_started = None

    def _die(self, exc: BaseException) -> None:
        """Crash-only: record the cause, answer every waiting client, tell the process."""
        self.failure = exc
        if isinstance(exc, ApplyFailed):
            # An expected kind of failure: one line naming the shard and index is enough.
            log.error("raft_loop_failed", group=exc.group, index=exc.index, error=describe(exc))
        else:
            log.error("raft_loop_failed", error=describe(exc), exc_info=exc)
        self._fail_waiting(LoopFailed(exc))
        self._inbox.clear()
        self.on_fatal(exc)

    def _fail_waiting(self, error: RaftError) -> None:
        for g in self.groups.values():
            g.fail_all(error)

    async def _round(self, ticks: int) -> None:
        self.rounds += 1
        if self.disk_stall is not None:
            await self._retry_stalled(ticks)
            return
        ticks += self._owed_ticks  # replayed after a stall (see the module docstring)
        self._owed_ticks = 0
        for _ in range(ticks):
            for g in self.groups.values():
                g.raft.tick()
        inbox, self._inbox = self._inbox, []
        for gid, m in inbox:
            target = self.groups.get(gid)
            if target is not None:
                target.raft.step(m)
        for g in self.groups.values():
            g.take_requests()
        round_, staged = self._collect()
        if staged and await self._persist(round_):
            self._finish(round_)

    def _collect(self) -> tuple[list[_Unfinished], bool]:
        """Every group's Ready, staged; a full disk stops the collection (and stalls):
        then False."""
        round_: list[_Unfinished] = []
        for g in self.groups.values():
            if g.raft.has_ready():
                u = _Unfinished(g, g.raft.ready())
                round_.append(u)
                if not self._stage(u, round_):
                    return round_, False
        return round_, True

    def _stage(self, u: _Unfinished, round_: list[_Unfinished]) -> bool:
        try:
            u.group.storage.stage(u.ready)
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            self._stall(round_, exc)
            return False
        u.staged = True
        return True

    async def _persist(self, round_: list[_Unfinished]) -> bool:
        """One sync for the round, if any of it must be durable first; False (and
        stalled) if the disk is full."""
        if any(self._must_sync(u.group, u.ready) for u in round_):
            for u in round_:
                # Not again when a refused round is retried: a stalled leader's appends,
                # re-sent every retry, would reset its followers' election timers and
                # keep them from electing a leader that has disk space.
                if u.messages_sent or not u.ready.messages:
                    continue
                if self._may_send_before_sync(u.group, u.ready):
                    u.group.send_messages(u.ready)
                    u.messages_sent = True
            try:
                await self.sync()
            except Exception as exc:
                if not is_disk_full(exc):
                    raise
                self._stall(round_, exc)
                return False
            self.syncs += 1
            for u in round_:
                hs = u.ready.hard_state
                if hs is not None:
                    self._durable_term_vote[u.group.id] = (hs.term, hs.vote)
        for u in round_:
            u.synced = True
        return True

    def _finish(self, round_: list[_Unfinished]) -> bool:
        """Send, apply and advance each durable Ready; a full disk (the engine) stalls
        the rest (applying again is harmless: the engine skips what it holds)."""
        for pos, u in enumerate(round_):
            try:
                u.group.finish(u.ready, messages_sent=u.messages_sent)
            except Exception as exc:
                if not is_disk_full(exc):
                    raise
                u.messages_sent = True  # finish() sends first
                self._stall(round_[pos:], exc)
                return False
        if any(u.group.raft.has_ready() for u in round_):
            self._wake.set()  # e.g. a leader that just committed has appends to send
        return True

    def _stall(self, unfinished: list[_Unfinished], exc: BaseException) -> None:
        first = self.disk_stall is None  # not a retry of a round already refused
        reason = describe(exc)
        if first:
            self.disk_stall = DiskStall(reason, time.time())
            log.error("disk_full", error=reason, groups=[u.group.id for u in unfinished])
            for g in self.groups.values():
                g.fail_all(StorageFull(reason, proposed=True))
        self._unfinished = unfinished
        self._next_retry = time.monotonic() + DISK_RETRY_INTERVAL

    async def _retry_stalled(self, ticks: int) -> None:
        """A round while the disk is full: no core moves; every DISK_RETRY_INTERVAL the
        refused round is tried again (its writes are the probe for free space)."""
        self._owed_ticks = min(self._owed_ticks + ticks, MAX_CATCH_UP_TICKS)
        self.dropped_while_stalled += len(self._inbox)
        self._inbox = []
        if time.monotonic() < self._next_retry:
            return
        unfinished = self._unfinished
        for u in unfinished:
            if not u.staged and not self._stage(u, unfinished):
                return
        synced = all(u.synced for u in unfinished) or await self._persist(unfinished)
        if synced and self._finish(unfinished):
            stall, self.disk_stall, self._unfinished = self.disk_stall, None, []
            since = stall.since if stall else time.time()
            log.info("disk_space_recovered", stalled_s=round(time.time() - since, 3))
            self._wake.set()

    def _may_send_before_sync(self, g: ReplicaGroup, rd: Ready) -> bool:
        """A leader's messages may leave while its own disk write is in flight.

        Raft thesis 10.2.1, and etcd's leader does the same: a leader's appends and
        heartbeats carry entries from its log and a commit index that a majority's
        durable acknowledgements already proved, so nothing they say depends on this
        node's unsynced state; the core counts the leader's own log toward a quorum only
        in advance(), after the sync. Only when the term and vote are already durable
        (a leader that has just been elected made them so before asking for votes) and
        no snapshot is being installed. Followers and candidates keep sync-then-send:
        their answers (append acks, votes) promise durability.
        """
        if g.raft.role != Role.LEADER or rd.snapshot is not None:
            return False
        hs = rd.hard_state
        return hs is None or self._durable_term_vote.get(g.id) == (hs.term, hs.vote)

    def _must_sync(self, g: ReplicaGroup, rd: Ready) -> bool:
        """Whether `rd` must be durable before its messages go out and it is applied.

        New entries, a snapshot, or a new term or vote: yes (Raft's persistent state).
        A hard state that differs only in its commit index: no, as in etcd's MustSync.
        The commit index is volatile state in Raft (a restarted node learns it again
        from the leader, and RaftLog starts at max(commit, snapshot index)); the record
        is still staged and reaches the disk with the next sync. Entries it marks
        committed are already durable on a majority, and an engine that applied them
        ahead of the durable commit skips them on replay (machines.ShardMachine).
        """
        if rd.entries or rd.snapshot is not None:
            return True
        hs = rd.hard_state
        return hs is not None and self._durable_term_vote.get(g.id) != (hs.term, hs.vote)
