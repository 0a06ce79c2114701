"""Compaction of a big shard must not stop the node: the state machine's export runs in
a thread, writes keep being answered meanwhile, and the log is compacted afterwards at
the index the export captured (shardset_node.replication.group.ReplicaGroup._maybe_compact)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

from shardset_node.replication.group import ReplicaGroup
from shardset_node.replication.host import RaftHost
from shardset_raft import ConfState, Entry, Raft, RaftConfig, Ready, Snapshot

EXPORT_SECONDS = 0.5


class SlowExportMachine:
    """Counts applied entries; its export takes EXPORT_SECONDS and says in which
    thread it ran and how many writes were answered while it ran."""

    def __init__(self) -> None:
        self.applied = 0
        self.lock = threading.Lock()
        self.export_threads: list[int] = []
        self.answered_during_export: list[int] = []
        self.answered = 0

    def apply(self, entries: Sequence[Entry]) -> list[object]:
        with self.lock:
            for e in entries:
                if e.data:
                    self.applied = e.index
        return [None] * len(entries)

    def restore(self, snapshot: Snapshot) -> None:
        # Only the bootstrap membership's empty snapshot: one voter never gets another.
        assert snapshot.meta.index == 0 and not snapshot.data, snapshot.meta

    def snapshot(self) -> bytes:
        raise AssertionError("must not export on the event loop")

    def export_state(self) -> tuple[int, bytes]:
        self.export_threads.append(threading.get_ident())
        with self.lock:
            index = self.applied
        before = self.answered
        time.sleep(EXPORT_SECONDS)
        self.answered_during_export.append(self.answered - before)
        return index, f"state at {index}".encode()


class MemoryStorage:
    def __init__(self) -> None:
        self.snapshots: list[Snapshot] = []

    def stage(self, rd: Ready) -> None:
        pass

    def save_snapshot(self, snapshot: Snapshot) -> None:
        self.snapshots.append(snapshot)


def test_a_slow_export_runs_in_a_thread_while_writes_are_answered() -> None:
    async def scenario() -> None:
        host = RaftHost(_no_sync, tick_interval=0.01)
        raft = Raft(RaftConfig(id=1, election_tick=3, seed=1), bootstrap=ConfState({1}))
        machine = SlowExportMachine()
        storage = MemoryStorage()
        group = ReplicaGroup(1, raft, storage, machine, lambda *_: None, compact_every=20)
        host.add(group)
        await host.start()
        try:
            while raft.leader != 1:
                await asyncio.sleep(0.01)
            deadline = time.monotonic() + 10.0
            n = 0
            # Writes go on through the export; the compaction lands afterwards.
            while not storage.snapshots or n < 60:
                assert time.monotonic() < deadline, "no compaction within 10 s"
                await group.propose(f"w{n}".encode())
                machine.answered += 1
                n += 1
        finally:
            await host.stop()
        main = threading.get_ident()
        assert machine.export_threads and main not in machine.export_threads
        assert machine.answered_during_export[0] > 0, "writes waited for the export"
        snap = storage.snapshots[0]
        assert snap.data == f"state at {snap.meta.index}".encode()
        assert 20 <= snap.meta.index <= raft.applied
        assert raft.log.meta.index == storage.snapshots[-1].meta.index

    asyncio.run(asyncio.wait_for(scenario(), 30.0))


async def _no_sync() -> None:
    return None
