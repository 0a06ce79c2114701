"""A full disk refuses writes without losing or half-writing anything, and the storage
is usable again once space returns (issue 15: "Full disk")."""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardset_node.storage.diskspace import DiskFull, is_disk_full
from shardset_node.storage.wal import WalRecord, WriteAheadLog


def rec(group: int, index: int, size: int = 64) -> WalRecord:
    return WalRecord(group=group, kind=1, index=index, body=b"x" * size)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, unmounted afterwards (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(directory: Path) -> Path:
    """Take every free byte of the file system holding `directory`."""
    path = directory / "ballast"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for size in (1 << 16, 4096, 512, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as e:
                    assert e.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return path


def test_disk_full_is_recognised_through_causes() -> None:
    import sqlite3

    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(sqlite3.OperationalError("database or disk is full"))
    wrapped = RuntimeError("apply failed")
    wrapped.__cause__ = OSError(errno.EDQUOT, "Disk quota exceeded")
    assert is_disk_full(wrapped)
    assert not is_disk_full(OSError(errno.EIO, "Input/output error"))
    assert not is_disk_full(ValueError("bad entry"))


def test_wal_sync_on_a_full_disk_refuses_and_recovers(small_fs: Path) -> None:
    wal_dir = small_fs / "wal"

    async def go() -> None:
        wal = WriteAheadLog(wal_dir)
        wal.open()
        wal.append(rec(1, 1))
        await wal.sync()
        ballast = fill(small_fs)
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
