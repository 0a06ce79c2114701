"""Durable side files (issue 14, item 3).

A side file survives a power loss only if its bytes were fsynced before the rename and
the directory after it; these tests record every ``os.fsync`` while the real callers
write (the tombstones, the origin, a freeze's moved-slot file) and check both happened
before the call returned.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shardset_node.kvengine import KvEngine
from shardset_node.machines import ShardMachine, system_command
from shardset_node.node import ORIGIN, TOMBSTONES, Node, NodeConfig
from shardset_node.shardmap import NodeAddress, bootstrap_map
from shardset_raft import Entry

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


def _node(tmp_path: Path) -> Node:
    nodes = {1: NodeAddress("127.0.0.1:1", "127.0.0.1:2")}
    cfg = NodeConfig(1, tmp_path / "data", "127.0.0.1", 0, bootstrap_map(nodes, 1, 1))
    return Node(cfg)


def test_tombstones_are_durable_when_saved(tmp_path: Path, fsyncs: list[_Sync]) -> None:
    node = _node(tmp_path)
    try:
        node.tombstones = {3, 7}
        node._save_tombstones()
        assert_durable(node.cfg.data_dir / TOMBSTONES, fsyncs)
        assert node._load_tombstones() == {3, 7}
    finally:
        node.engine.close()


def test_origin_is_durable_when_decided(tmp_path: Path, fsyncs: list[_Sync]) -> None:
    node = _node(tmp_path)
    try:
        asyncio.run(node.storage.open())
        assert node._origin() == "bootstrap"
        assert_durable(node.cfg.data_dir / ORIGIN, fsyncs)
        asyncio.run(node.storage.close())
    finally:
        node.engine.close()


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


def test_a_freeze_makes_the_moved_ranges_durable(
    machines: Callable[[str], ShardMachine], fsyncs: list[_Sync]
) -> None:
    m = machines("a")
    m.apply([Entry(1, 1, data=system_command("freeze", 0, 100))])
    path = m.scratch.parent / f"moved-slots-{SHARD}.json"
    assert_durable(path, fsyncs)

