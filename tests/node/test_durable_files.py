"""Durable side files and the moved-slot ranges in a shard's snapshot (issue 14, item 3).

A side file survives a power loss only if its bytes were fsynced before the rename and
the directory after it; these tests record every ``os.fsync`` while the real callers
write (the tombstones, the origin, a freeze's moved-slot file) and check both happened
before the call returned. The moved ranges a freeze records must also travel with the
shard's snapshot: a replica restored from it refuses the same slots as the original.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shardset_node.config import NodeConfig
from shardset_node.core import ORIGIN, TOMBSTONES, Node
from shardset_node.main import assemble
from shardset_node.replication.machines import ShardMachine, system_command
from shardset_node.storage.kvengine import KvEngine
from shardset_proto.commands import Put, encode_command
from shardset_proto.shardmap import NodeAddress, bootstrap_map
from shardset_proto.slots import SLOTS, slot_of
from shardset_raft import Entry, Snapshot, SnapshotMeta

SHARD = 1


@dataclass(frozen=True)
class _Sync:
    inode: int
    # For a directory: its entries (name -> inode) at the moment it was synced.
    entries: dict[str, int] | None


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[_Sync]]:
    """Every os.fsync made while the test runs, in order."""
    seen: list[_Sync] = []
    real = os.fsync

    def record(fd: int) -> None:
        st = os.fstat(fd)
        entries = None
        if stat.S_ISDIR(st.st_mode):
            with os.scandir(f"/proc/self/fd/{fd}") as it:
                entries = {e.name: e.inode() for e in it}
        seen.append(_Sync(st.st_ino, entries))
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    yield seen


def assert_durable(path: Path, syncs: list[_Sync]) -> None:
    """The file's bytes were synced, then its directory, holding that very file."""
    inode = path.stat().st_ino
    files = [i for i, s in enumerate(syncs) if s.entries is None and s.inode == inode]
    assert files, f"{path.name} was never fsynced"
    dir_inode = path.parent.stat().st_ino
    dirs = [
        i
        for i, s in enumerate(syncs)
        if s.inode == dir_inode and s.entries is not None and s.entries.get(path.name) == inode
    ]
    assert dirs, f"the directory of {path.name} was not fsynced after the rename"
    assert min(files) < max(dirs)


def _config(tmp_path: Path) -> NodeConfig:
    nodes = {1: NodeAddress("127.0.0.1:1", "127.0.0.1:2")}
    return NodeConfig(1, tmp_path / "data", "127.0.0.1", 0, bootstrap_map(nodes, 1, 1))


def test_tombstones_are_durable_when_saved(tmp_path: Path, fsyncs: list[_Sync]) -> None:
    node = Node(_config(tmp_path))
    try:
        asyncio.run(node.storage.open())
        node.tombstones = {3, 7, 9}
        node.host_shard(9, frozenset())  # shard 9 hosted again: the file is saved without it
        assert_durable(node.cfg.data_dir / TOMBSTONES, fsyncs)
        asyncio.run(node.storage.close())
    finally:
        node.engine.close()
    again = Node(_config(tmp_path))  # loads the tombstones at construction
    try:
        assert again.tombstones == {3, 7}
    finally:
        again.engine.close()


def test_origin_is_durable_when_decided(tmp_path: Path, fsyncs: list[_Sync]) -> None:
    process = assemble(_config(tmp_path))

    async def start_and_stop() -> None:
        await process.start()
        await process.stop()

    asyncio.run(start_and_stop())
    assert process.node.origin == "bootstrap"
    assert_durable(process.node.cfg.data_dir / ORIGIN, fsyncs)


@pytest.fixture
def machines(tmp_path: Path) -> Iterator[Callable[[str], ShardMachine]]:
    engines: list[KvEngine] = []

    def make(name: str) -> ShardMachine:
        (tmp_path / name).mkdir()
        engines.append(KvEngine(tmp_path / name / "kv.sqlite3"))
        return ShardMachine(engines[-1], SHARD, tmp_path / name / "tmp")

    yield make
    for engine in engines:
        engine.close()


def _key_in(start: int, end: int) -> bytes:
    return next(k for i in range(100_000) if start <= slot_of(k := b"k%d" % i) < end)


def test_a_freeze_makes_the_moved_ranges_durable(
    machines: Callable[[str], ShardMachine], fsyncs: list[_Sync]
) -> None:
    m = machines("a")
    m.apply([Entry(1, 1, data=system_command("freeze", 0, 100))])
    path = m.scratch.parent / f"moved-slots-{SHARD}.json"
    assert_durable(path, fsyncs)


def _put(index: int, key: bytes) -> Entry:
    return Entry(1, index, data=encode_command(Put(key, b"v")))


def test_a_restored_replica_refuses_the_slots_the_original_refuses(
    machines: Callable[[str], ShardMachine],
) -> None:
    original = machines("original")
    inside, outside = _key_in(100, 200), _key_in(200, SLOTS)
    original.apply([_put(1, inside), _put(2, outside)])
    original.apply([Entry(1, 3, data=system_command("freeze", 100, 200))])
    snapshot = Snapshot(SnapshotMeta(3, 1), original.snapshot())

    restored = machines("restored")  # another node: a fresh data directory
    restored.restore(snapshot)

    assert [restored.refuses(s) for s in range(SLOTS)] == [
        original.refuses(s) for s in range(SLOTS)
    ]
    assert restored.moved == original.moved == [(100, 200)]
    later = [_put(4, inside), _put(5, outside)]
    assert restored.apply(later) == original.apply(later)
    assert original.apply([_put(6, inside)]) == [{"error": "slot_moved"}]
    assert restored.engine.get(SHARD, outside) == b"v"


def test_a_version_0_snapshot_still_restores(
    machines: Callable[[str], ShardMachine], tmp_path: Path
) -> None:
    original = machines("original")
    key = _key_in(0, SLOTS)
    original.apply([_put(1, key)])
    original.engine.export_snapshot(SHARD, tmp_path / "v0")  # the engine's file alone

    restored = machines("restored")
    restored.restore(Snapshot(SnapshotMeta(1, 1), (tmp_path / "v0").read_bytes()))
    assert restored.engine.get(SHARD, key) == b"v"
    assert restored.moved == []


def test_an_export_overtaken_by_a_freeze_is_taken_again(
    machines: Callable[[str], ShardMachine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export runs in a thread while applies go on: the ranges it carries must be
    those at the index it exported, not those of a freeze applied meanwhile."""
    m = machines("a")
    m.apply([_put(1, _key_in(0, 100))])
    real = m.engine.export_snapshot
    exports: list[int] = []

    def export_then_freeze(shard: int, path: Path) -> object:
        info = real(shard, path)
        exports.append(info.applied_index)
        if len(exports) == 1:  # the freeze lands after the first export read index 1
            m.apply([Entry(1, 2, data=system_command("freeze", 0, 100))])
        return info

    monkeypatch.setattr(m.engine, "export_snapshot", export_then_freeze)
    index, data = m.export_state()
    assert exports == [1, 2]
    restored = machines("restored")
    restored.restore(Snapshot(SnapshotMeta(index, 1), data))
    assert (index, restored.moved) == (2, [(0, 100)])
