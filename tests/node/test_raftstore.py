"""Per-group Raft storage on the shared WAL, checked against the simulator's Disk model."""

from __future__ import annotations

import asyncio
import copy
import os
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from shardset_node.storage.raftstore import NodeStorage, snapshot_name
from shardset_raft import (
    ConfState,
    Entry,
    HardState,
    Raft,
    RaftConfig,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
)
from shardset_sim.simulator import Disk

State = tuple[HardState, Snapshot, list[Entry]]


def ready(
    entries: tuple[Entry, ...] = (),
    hard_state: HardState | None = None,
    snapshot: Snapshot | None = None,
) -> Ready:
    return Ready(hard_state, None, entries, snapshot, (), (), ())


def ents(first: int, last: int, term: int) -> tuple[Entry, ...]:
    return tuple(Entry(term, i, data=f"{term}/{i}".encode()) for i in range(first, last + 1))


def snap(index: int, term: int, data: bytes = b"state", voters: set[int] | None = None) -> Snapshot:
    return Snapshot(SnapshotMeta(index, term, ConfState(frozenset(voters or {1, 2, 3}))), data)


async def opened(directory: Path, segment_bytes: int = 1 << 20) -> NodeStorage:
    storage = NodeStorage(directory, segment_bytes=segment_bytes, fsync=False)
    await storage.open()
    return storage


def recovered(directory: Path, *groups: int) -> list[State]:
    async def go() -> list[State]:
        storage = await opened(directory)
        states = [storage.group(g).initial_state() for g in groups]
        await storage.close()
        return states

    return asyncio.run(go())


def model_state(disk: Disk) -> State:
    return disk.hard_state, disk.snapshot, disk.entries


def test_state_round_trips_across_reopen(tmp_path: Path) -> None:
    disks = {1: Disk(), 2: Disk()}

    async def go() -> None:
        storage = await opened(tmp_path)
        for g, rd in [
            (1, ready(ents(1, 3, 1), HardState(1, 1, 0))),
            (2, ready(ents(1, 2, 4), HardState(4, 2, 1))),
            (1, ready(ents(4, 5, 1), HardState(1, 1, 3))),
        ]:
            storage.group(g).stage(rd)
            disks[g].persist(rd)
        await storage.close()

    asyncio.run(go())
    assert recovered(tmp_path, 1, 2) == [model_state(disks[1]), model_state(disks[2])]


def test_entries_truncate_the_stored_log_at_their_first_index(tmp_path: Path) -> None:
    async def go() -> None:
        storage = await opened(tmp_path)
        g = storage.group(5)
        g.stage(ready(ents(1, 5, 1)))
        await storage.sync()
        g.stage(ready(ents(3, 4, 2)))  # a new leader overwrote 3..5
        await storage.close()

    asyncio.run(go())
    ((_, _, entries),) = recovered(tmp_path, 5)
    assert entries == [*ents(1, 2, 1), *ents(3, 4, 2)]


def test_many_groups_share_one_sync(tmp_path: Path) -> None:
    async def go() -> NodeStorage:
        storage = NodeStorage(tmp_path)  # real fdatasync
        await storage.open()
        before = storage.wal.syncs

        async def writer(n: int) -> None:
            group, index = n % 10, n // 10 + 1
            storage.group(group).stage(ready(ents(index, index, 1), HardState(1, 0, index - 1)))
            await storage.sync()

        await asyncio.gather(*(writer(n) for n in range(100)))
        assert storage.wal.syncs - before <= 5, storage.wal.syncs - before
        await storage.close()
        return storage

    asyncio.run(go())
    for hs, _, entries in recovered(tmp_path, *range(10)):
        assert entries == list(ents(1, 10, 1)) and hs == HardState(1, 0, 9)


def test_a_snapshot_from_the_leader_replaces_the_log(tmp_path: Path) -> None:
    async def go() -> None:
        storage = await opened(tmp_path)
        g = storage.group(1)
        g.stage(ready(ents(1, 5, 1), HardState(1, 1, 2)))
        g.stage(ready(ents(11, 12, 3), HardState(3, 0, 10), snapshot=snap(10, 3)))
        await storage.close()

    asyncio.run(go())
    assert recovered(tmp_path, 1) == [(HardState(3, 0, 10), snap(10, 3), list(ents(11, 12, 3)))]


def test_a_local_snapshot_compacts_the_log(tmp_path: Path) -> None:
    async def go() -> None:
        storage = await opened(tmp_path)
        g = storage.group(1)
        g.stage(ready(ents(1, 10, 2), HardState(2, 1, 8)))
        await storage.sync()
        g.save_snapshot(snap(6, 2, b"applied through 6"))
        g.save_snapshot(snap(4, 2, b"older: ignored"))
        await storage.close()

    asyncio.run(go())
    (state,) = recovered(tmp_path, 1)
    assert state == (HardState(2, 1, 8), snap(6, 2, b"applied through 6"), list(ents(7, 10, 2)))


def test_a_corrupt_snapshot_is_skipped_for_an_older_one(tmp_path: Path) -> None:
    async def go() -> None:
        storage = await opened(tmp_path)
        g = storage.group(3)
        g.stage(ready(ents(1, 10, 2), HardState(2, 1, 9)))
        await storage.sync()
        g.save_snapshot(snap(4, 2, b"four"))
        await storage.sync()
        g.save_snapshot(snap(8, 2, b"eight"))
        await storage.close()

    asyncio.run(go())
    bad = tmp_path / "snap" / snapshot_name(3, snap(8, 2).meta)
    flip_last_byte(bad)
    with capture_logs() as logs:
        (state,) = recovered(tmp_path, 3)
    # The entries after the lost snapshot no longer connect: dropped; commit follows.
    # The node may have acknowledged them: it recovers up to its old last index
    # (abstains from votes and commitment until a leader caught it up past 10).
    assert state == (HardState(2, 1, 4, recovering=10), snap(4, 2, b"four"), [])
    (event,) = [e for e in logs if e["event"] == "snapshot_corrupt_skipped"]
    assert event["file"] == str(bad) and event["reason"] == "checksum mismatch"
    assert event["fallback_index"] == 4
    assert not bad.exists() and bad.with_name(bad.name + ".corrupt").exists()
    # The fallback was recorded: the next start needs no repair.
    with capture_logs() as logs:
        assert recovered(tmp_path, 3) == [state]
    assert not [e for e in logs if e["log_level"] == "error"]


def test_a_corrupt_only_snapshot_falls_back_to_empty(tmp_path: Path) -> None:
    async def go() -> None:
        storage = await opened(tmp_path)
        storage.group(1).stage(ready(ents(8, 9, 5), HardState(5, 2, 9), snapshot=snap(7, 5)))
        await storage.close()

    asyncio.run(go())
    flip_last_byte(tmp_path / "snap" / snapshot_name(1, snap(7, 5).meta))
    lost = (HardState(5, 2, 0, recovering=9), Snapshot(), [])
    with capture_logs():
        assert recovered(tmp_path, 1) == [lost]
    assert recovered(tmp_path, 1) == [lost]


def test_pruning_keeps_the_durable_snapshot_among_files_at_its_index(tmp_path: Path) -> None:
    """Files a crash left at the same index (their WAL records never became durable)
    sort after the durable snapshot by term; pruning must still keep the one the WAL
    names, or the group comes back with no voters (Hypothesis found it)."""

    async def go() -> None:
        storage = await opened(tmp_path)
        for term in (1, 3):
            storage.group(0).stage(ready(snapshot=snap(0, term, b"")))
            crash(storage)
            storage = await opened(tmp_path)
        storage.group(0).stage(ready(snapshot=snap(0, 0, b"")))  # the bootstrap conf state
        await storage.sync()
        await storage.close()

    asyncio.run(go())
    with capture_logs() as logs:
        assert recovered(tmp_path, 0) == [(HardState(), snap(0, 0, b""), [])]
    assert not [e for e in logs if e["log_level"] == "error"]


def flip_last_byte(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0x01
    path.write_bytes(bytes(blob))


def test_gc_deletes_superseded_segments_and_hard_state_survives(tmp_path: Path) -> None:
    async def go() -> list[Path]:
        storage = await opened(tmp_path, segment_bytes=400)
        storage.group(1).stage(ready(hard_state=HardState(7, 3, 0)))  # never written again
        busy = storage.group(2)
        for i in range(1, 60):
            busy.stage(ready(ents(i, i, 1), HardState(1, 2, i - 1)))
        await storage.sync()
        first = storage.wal.segments()[0]
        assert storage.gc() == []  # nothing compacted yet
        busy.save_snapshot(snap(59, 1))
        assert storage.gc() == []  # the snapshot's record is not durable yet
        await storage.sync()
        deleted = storage.gc()
        assert first in deleted and not first.exists()
        await storage.close()
        return deleted

    deleted = asyncio.run(go())
    assert len(deleted) > 3
    one, two = recovered(tmp_path, 1, 2)
    assert one == (HardState(7, 3, 0), Snapshot(), [])
    assert two == (HardState(1, 2, 58), snap(59, 1), [])


def test_gc_keeps_every_segment_from_an_uncompacted_entry_on(tmp_path: Path) -> None:
    async def go() -> None:
        storage = await opened(tmp_path, segment_bytes=400)
        storage.group(9).stage(ready(ents(1, 2, 1)))  # a group that never compacts
        busy = storage.group(2)
        for i in range(1, 60):
            busy.stage(ready(ents(i, i, 1)))
        busy.save_snapshot(snap(59, 1))
        await storage.sync()
        kept = storage.wal.segments()[0]
        assert storage.gc() == [] and kept.exists()
        await storage.close()

    asyncio.run(go())
    assert recovered(tmp_path, 9)[0][2] == list(ents(1, 2, 1))


def test_a_raft_core_restarts_from_what_it_persisted(tmp_path: Path) -> None:
    config = RaftConfig(id=1)

    async def drive(raft: Raft, storage: NodeStorage) -> None:
        while raft.has_ready():
            rd = raft.ready()
            storage.group(1).stage(rd)
            await storage.sync()
            raft.advance(rd)

    async def go() -> tuple[int, int, int]:
        storage = await opened(tmp_path)
        raft = Raft(config, bootstrap=ConfState(frozenset({1})))
        while raft.role != Role.LEADER:
            raft.tick()
            await drive(raft, storage)
        for n in range(5):
            raft.propose(f"put {n}".encode())
            await drive(raft, storage)
        await storage.close()
        return raft.term, raft.log.last_index(), raft.committed

    before = asyncio.run(go())
    hard_state, snapshot, entries = recovered(tmp_path, 1)[0]
    again = Raft(config, hard_state=hard_state, snapshot=snapshot, entries=entries)
    assert (again.term, again.log.last_index(), again.committed) == before
    assert again.conf.voters == {1}


# ---------------------------------------------------------------------- property
GROUPS = 3
# Compactions are frequent so that GC really deletes segments under the other ops.
OPS = ["ready"] * 5 + ["compact"] * 2 + ["sync", "gc", "reopen", "crash"]


def draw_ready(data: st.DataObject, disk: Disk) -> Ready:
    """A Ready a Raft core could hand over: contiguous entries, snapshots moving up."""
    base = disk.snapshot.meta.index
    last = base + len(disk.entries)
    snapshot = None
    if data.draw(st.integers(0, 4)) == 0:
        fresh = disk.snapshot == Snapshot()
        index = data.draw(st.integers(base if fresh else base + 1, last + 3))
        voters = data.draw(st.sets(st.integers(1, 5), max_size=3))
        snapshot = snap(
            index, data.draw(st.integers(0, 6)), data.draw(st.binary(max_size=8)), voters
        )
        base = last = index
    first = data.draw(st.integers(base + 1, last + 1))
    entries = ents(first, first + data.draw(st.integers(0, 4)) - 1, data.draw(st.integers(1, 6)))
    hard_state = None
    if data.draw(st.integers(0, 2)) == 0:  # rare enough to be left behind in old segments
        ints = st.integers(0, 9)
        hard_state = HardState(data.draw(ints), data.draw(ints), data.draw(ints))
    return ready(entries, hard_state, snapshot)


def draw_compaction(data: st.DataObject, disk: Disk) -> Snapshot | None:
    if not disk.entries:
        return None
    # Often everything: a group with nothing left lets GC take its segments.
    entry = (
        disk.entries[-1] if data.draw(st.booleans()) else data.draw(st.sampled_from(disk.entries))
    )
    return snap(entry.index, entry.term, data.draw(st.binary(max_size=8)))


def crash(storage: NodeStorage) -> None:
    """Die without flushing: whatever was only staged is lost."""
    fd = storage.wal._fd
    if fd is not None:
        os.close(fd)


@settings(max_examples=60)
@given(st.data())
def test_persisted_state_matches_the_disk_model(data: st.DataObject) -> None:
    steps = data.draw(st.integers(5, 60))

    async def go(directory: Path) -> None:
        model = {g: Disk() for g in range(GROUPS)}
        durable = copy.deepcopy(model)
        storage = await opened(directory, segment_bytes=data.draw(st.sampled_from([256, 2048])))

        async def restart() -> NodeStorage:
            fresh = await opened(directory, storage.wal.segment_bytes)
            for g in range(GROUPS):
                assert fresh.group(g).initial_state() == model_state(model[g]), g
            return fresh

        for _ in range(steps):
            op = data.draw(st.sampled_from(OPS))
            g = data.draw(st.integers(0, GROUPS - 1))
            if op == "ready":
                rd = draw_ready(data, model[g])
                storage.group(g).stage(rd)
                model[g].persist(rd)
            elif op == "compact" and (snapshot := draw_compaction(data, model[g])):
                storage.group(g).save_snapshot(snapshot)
                model[g].compact(snapshot)
            elif op == "sync":
                await storage.sync()
                durable = copy.deepcopy(model)
            elif op == "gc":
                storage.gc()
            elif op == "reopen":
                await storage.close()
                storage = await restart()
                durable = copy.deepcopy(model)
            elif op == "crash":
                crash(storage)
                model = copy.deepcopy(durable)
                storage = await restart()
        await storage.close()
        await restart()

    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(go(Path(directory)))


# ---------------------------------------------------------------- lost tails (issue 15)
def _damage_last_byte(directory: Path) -> None:
    wal = sorted((directory / "wal").glob("wal-*.log"))
    last = [p for p in wal if p.stat().st_size][-1]
    data = bytearray(last.read_bytes())
    data[-1] ^= 0xFF  # the last record's checksum no longer holds: cut as a torn tail
    last.write_bytes(bytes(data))


def test_a_cut_tail_marks_every_group_recovering_durably_until_cleared(tmp_path: Path) -> None:
    async def write() -> None:
        storage = await opened(tmp_path)
        storage.group(1).stage(ready(ents(1, 5, 1), HardState(1, 1, 3)))
        storage.group(2).stage(ready(ents(1, 2, 1), HardState(1, 2, 2)))
        await storage.sync()
        storage.group(1).stage(ready(ents(6, 8, 1)))  # the record the disk loses
        await storage.sync()
        await storage.close()

    asyncio.run(write())
    _damage_last_byte(tmp_path)
    with capture_logs() as logs:
        (hs1, _, e1), (hs2, _, e2) = recovered(tmp_path, 1, 2)
    assert [e.index for e in e1] == [1, 2, 3, 4, 5] and len(e2) == 2
    # Which group the lost record belonged to is unknown: both may have lost entries
    # at least up to what group 1 really had (8).
    assert hs1.recovering >= 8 and hs2.recovering > 2
    assert {"raft_log_recovering", "wal_torn_tail_truncated"} <= {e["event"] for e in logs}
    # The mark survives another restart (no cut this time) ...
    ((again, _, _),) = recovered(tmp_path, 1)
    assert again.recovering == hs1.recovering

    # ... and the core's clearing, a hard state without it, is durable too.
    async def clear() -> None:
        storage = await opened(tmp_path)
        storage.group(1).stage(ready((), HardState(2, 0, 5)))
        await storage.close()

    asyncio.run(clear())
    (cleared, _, _), (still, _, _) = recovered(tmp_path, 1, 2)
    assert cleared == HardState(2, 0, 5) and still.recovering == hs2.recovering


def test_a_core_restored_from_a_cut_tail_abstains_from_votes(tmp_path: Path) -> None:
    async def write() -> None:
        storage = await opened(tmp_path)
        storage.group(1).stage(ready(ents(1, 3, 1), HardState(1, 1, 3), snap(0, 0)))
        await storage.sync()
        storage.group(1).stage(ready(ents(4, 4, 1)))
        await storage.close()

    asyncio.run(write())
    _damage_last_byte(tmp_path)
    ((hs, snapshot, entries),) = recovered(tmp_path, 1)
    raft = Raft(RaftConfig(id=2), hard_state=hs, snapshot=snapshot, entries=entries)
    assert raft.recovering >= 4 and not raft.promotable()
