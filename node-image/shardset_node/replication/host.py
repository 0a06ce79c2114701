"""The multi-Raft host loop: every group on the node, one disk sync per round.

Each round: tick the groups whose timer is due, step the messages that
arrived, hand queued client requests to the cores, collect every group's
Ready, stage them all in the shared write-ahead log, make them durable with a
single sync (group commit across shards), then send, apply and advance. While
a sync is in flight, new messages and requests queue up and are batched into
the next round: that is where batching under load comes from.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import structlog

from shardset_node.replication.group import ReplicaGroup
from shardset_raft import Message, Ready, Role

log = structlog.get_logger(__name__)

Sync = Callable[[], Awaitable[None]]
# After an event-loop stall, the ticks that were missed are replayed (up to this many),
# so Raft's tick clock keeps up with real time: a leader that was paused must not go on
# counting a lease (or an election timeout) from before the pause.
MAX_CATCH_UP_TICKS = 40


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

    def add(self, group: ReplicaGroup) -> None:
        group.wake = self._wake.set
        self.groups[group.id] = group
        self._wake.set()

    def remove(self, group_id: int) -> ReplicaGroup | None:
        return self.groups.pop(group_id, None)

    def deliver(self, from_node: int, items: list[tuple[int, Message]]) -> None:
        """Transport callback: queue messages for the next round."""
        self._inbox.extend(items)
        self._wake.set()

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
            try:
                await self._round(ticks)
            except Exception:
                log.exception("raft round failed")
                raise

    async def _round(self, ticks: int) -> None:
        self.rounds += 1
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
        readies: list[tuple[ReplicaGroup, Ready]] = []
        for g in self.groups.values():
            if g.raft.has_ready():
                rd = g.raft.ready()
                g.storage.stage(rd)
                readies.append((g, rd))
        sent_early: set[int] = set()
        if any(self._must_sync(g, rd) for g, rd in readies):
            for g, rd in readies:
                if rd.messages and self._may_send_before_sync(g, rd):
                    g.send_messages(rd)
                    sent_early.add(g.id)
            await self.sync()
            self.syncs += 1
            for g, rd in readies:
                if rd.hard_state is not None:
                    self._durable_term_vote[g.id] = (rd.hard_state.term, rd.hard_state.vote)
        for g, rd in readies:
            g.finish(rd, messages_sent=g.id in sent_early)
        if any(g.raft.has_ready() for g, _ in readies):
            self._wake.set()  # e.g. a leader that just committed has appends to send

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
