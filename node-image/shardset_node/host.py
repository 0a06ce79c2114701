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

from shardset_node.group import ReplicaGroup
from shardset_raft import Message, Ready

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
        if any(rd.entries or rd.hard_state or rd.snapshot for _, rd in readies):
            await self.sync()
            self.syncs += 1
        for g, rd in readies:
            g.finish(rd)
        if any(g.raft.has_ready() for g, _ in readies):
            self._wake.set()  # e.g. a leader that just committed has appends to send
