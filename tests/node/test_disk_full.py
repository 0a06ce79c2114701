"""A full disk refuses writes without losing or half-writing anything, and the storage
is usable again once space returns (issue 15: "Full disk")."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from shardset_node.main import FATAL_EXIT
from shardset_node.storage.diskspace import DiskFull, is_disk_full
from shardset_node.storage.wal import WalRecord, WriteAheadLog
from shardset_proto.shardmap import NodeAddress, bootstrap_map


def rec(group: int, index: int, size: int = 64) -> WalRecord:
    return WalRecord(group=group, kind=1, index=index, body=b"x" * size)


@pytest.fixture
def small_fs(tmp_path: Path, mount_tmpfs: Callable[[Path, str], Path]) -> Path:
    """A 1 MiB tmpfs (root only)."""
    return mount_tmpfs(tmp_path / "small", "1m")


def test_disk_full_is_recognised_through_causes() -> None:
    import sqlite3

    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(sqlite3.OperationalError("database or disk is full"))
    wrapped = RuntimeError("apply failed")
    wrapped.__cause__ = OSError(errno.EDQUOT, "Disk quota exceeded")
    assert is_disk_full(wrapped)
    assert not is_disk_full(OSError(errno.EIO, "Input/output error"))
    assert not is_disk_full(ValueError("bad entry"))


def test_wal_sync_on_a_full_disk_refuses_and_recovers(
    small_fs: Path, fill_disk: Callable[..., Path]
) -> None:
    wal_dir = small_fs / "wal"

    async def go() -> None:
        wal = WriteAheadLog(wal_dir)
        wal.open()
        wal.append(rec(1, 1))
        await wal.sync()
        ballast = fill_disk(small_fs)
        for i in range(2, 40):
            wal.append(rec(1, i, size=4096))
        with pytest.raises(DiskFull):
            await wal.sync()
        # Nothing of the refused flush counts as synced, and the log is still usable.
        assert wal.records_synced == 1
        with pytest.raises(DiskFull):
            await wal.sync()
        ballast.unlink()
        wal.append(rec(1, 40))
        await wal.sync()
        assert wal.records_synced == 40
        await wal.close()

    asyncio.run(go())
    replayed = WriteAheadLog(wal_dir).open()
    # Every record once, in order: the refused writes were cut back, not left half-done.
    assert [r.index for r in replayed] == list(range(1, 41))


def test_wal_fdatasync_enospc_is_retried_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.fdatasync
    failures = [OSError(errno.ENOSPC, "No space left on device")]

    def flaky(fd: int) -> None:
        if failures:
            raise failures.pop()
        real(fd)

    async def go() -> None:
        wal = WriteAheadLog(tmp_path / "wal")
        wal.open()
        wal.append(rec(1, 1))
        await wal.sync()
        monkeypatch.setattr(os, "fdatasync", flaky)
        wal.append(rec(1, 2))
        with pytest.raises(DiskFull):
            await wal.sync()
        assert wal.records_synced == 1
        await wal.sync()
        assert wal.records_synced == 2
        await wal.close()

    asyncio.run(go())
    assert [r.index for r in WriteAheadLog(tmp_path / "wal").open()] == [1, 2]


def test_a_node_that_cannot_start_on_a_full_disk_says_so_in_one_line(
    small_fs: Path, fill_disk: Callable[..., Path]
) -> None:
    boot = bootstrap_map({1: NodeAddress("127.0.0.1:1", "http://127.0.0.1:2")}, 1, 1)
    (small_fs.parent / "boot.json").write_bytes(boot.encode())
    fill_disk(small_fs)
    cmd = [
        sys.executable, "-m", "shardset_node", "--id", "1", "--data-dir", str(small_fs),
        "--peer", "127.0.0.1:0", "--api", "127.0.0.1:0",
        "--bootstrap", str(small_fs.parent / "boot.json"),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == FATAL_EXIT, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    (line,) = [x for x in done.stderr.splitlines() if "node_fatal" in x]
    assert "cannot start" in json.loads(line)["error"]
