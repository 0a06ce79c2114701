"""The shared write-ahead log: framing, group commit, torn tails, corruption, GC."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from shardset_node.storage.wal import WalCorruption, WalError, WalRecord, WriteAheadLog


def rec(group: int, index: int, body: object = b"x" * 32) -> WalRecord:
    return WalRecord(group=group, kind=1, index=index, body=body)


Checkpoint = Callable[[], Iterable[WalRecord]] | None


def opened(
    directory: Path, segment_bytes: int = 1 << 20, checkpoint: Checkpoint = None
) -> tuple[WriteAheadLog, list[WalRecord]]:
    wal = WriteAheadLog(directory, segment_bytes=segment_bytes, checkpoint=checkpoint)
    return wal, wal.open()


def write(
    directory: Path,
    records: Iterable[WalRecord],
    segment_bytes: int = 1 << 20,
    checkpoint: Checkpoint = None,
) -> WriteAheadLog:
    async def go() -> WriteAheadLog:
        wal, _ = opened(directory, segment_bytes, checkpoint)
        for r in records:
            wal.append(r)
        await wal.close()
        return wal

    return asyncio.run(go())


@pytest.fixture
def wal_dir(tmp_path: Path) -> Path:
    return tmp_path / "wal"  # tmp_path itself holds the copies records_in() replays


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("wal-*.log"))


def test_records_round_trip_across_reopen(wal_dir: Path) -> None:
    records = [rec(g, i, [i, b"payload", "text", None]) for i in range(1, 20) for g in (1, 7)]
    write(wal_dir, records)
    _, replayed = opened(wal_dir)
    assert replayed == records
    assert [p.name for p in segment_files(wal_dir)] == ["wal-0000000000000001.log"]


def test_appends_after_reopen_continue_the_log(wal_dir: Path) -> None:
    write(wal_dir, [rec(1, 1), rec(1, 2)])
    write(wal_dir, [rec(1, 3)])
    _, replayed = opened(wal_dir)
    assert [r.index for r in replayed] == [1, 2, 3]


def test_concurrent_syncs_share_fdatasyncs(wal_dir: Path) -> None:
    rounds, tasks = 5, 100

    async def go() -> WriteAheadLog:
        wal, _ = opened(wal_dir)  # real fdatasync

        async def writer(n: int) -> None:
            for i in range(rounds):
                wal.append(rec(n % 10, i + 1))
                mine = wal.records_appended
                await wal.sync()
                assert wal.records_synced >= mine  # sync() returned only once durable

        await asyncio.gather(*(writer(n) for n in range(tasks)))
        await wal.close()
        return wal

    wal = asyncio.run(go())
    assert wal.records_synced == rounds * tasks
    # One flush per wave of writers, not one per writer: far below 500.
    assert wal.syncs <= 3 * rounds, wal.syncs


def test_a_cancelled_caller_does_not_cancel_the_shared_flush(wal_dir: Path) -> None:
    async def go() -> WriteAheadLog:
        wal, _ = opened(wal_dir)
        wal.append(rec(1, 1))
        first = asyncio.create_task(wal.sync())
        wal.append(rec(2, 1))
        second = asyncio.create_task(wal.sync())
        await asyncio.sleep(0)
        first.cancel()
        await second
        return wal

    wal = asyncio.run(go())
    assert wal.records_synced == 2
    assert len(opened(wal_dir)[1]) == 2


def test_a_failed_sync_poisons_the_log(wal_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    async def go() -> None:
        wal, _ = opened(wal_dir)
        wal.append(rec(1, 1))
        monkeypatch.setattr(os, "fdatasync", broken)
        with pytest.raises(OSError):
            await wal.sync()
        # After a failed fsync nobody can tell what reached the disk: refuse.
        with pytest.raises(WalError):
            wal.append(rec(1, 2))
        with pytest.raises(WalError):
            await wal.sync()

    asyncio.run(go())


# ---------------------------------------------------------------------- recovery
def test_torn_tail_is_cut_and_earlier_records_survive(wal_dir: Path) -> None:
    write(wal_dir, [rec(1, i) for i in range(1, 6)])
    (seg,) = segment_files(wal_dir)
    size = seg.stat().st_size
    good = size - size // 5  # five equal records: the fifth starts here
    os.truncate(seg, size - 7)  # mid-record, as a crash during write leaves it
    with capture_logs() as logs:
        _, replayed = opened(wal_dir)
    assert [r.index for r in replayed] == [1, 2, 3, 4]
    assert seg.stat().st_size == good
    (event,) = [e for e in logs if e["event"] == "wal_torn_tail_truncated"]
    assert event["file"] == str(seg) and event["offset"] == good
    assert event["reason"] == "length beyond end of file"


def test_bit_flip_in_the_last_record_is_cut(wal_dir: Path) -> None:
    write(wal_dir, [rec(1, i) for i in range(1, 6)])
    (seg,) = segment_files(wal_dir)
    flip(seg, seg.stat().st_size - 10)
    with capture_logs() as logs:
        _, replayed = opened(wal_dir)
    assert [r.index for r in replayed] == [1, 2, 3, 4]
    assert [e["reason"] for e in logs] == ["checksum mismatch"]


def test_torn_header_and_zero_fill_are_cut(wal_dir: Path) -> None:
    write(wal_dir, [rec(1, 1), rec(1, 2)])
    (seg,) = segment_files(wal_dir)
    with seg.open("ab") as f:
        f.write(b"\x53\x57")  # half a magic
    assert len(opened(wal_dir)[1]) == 2
    with seg.open("ab") as f:
        f.write(bytes(4096))  # size extended, data never written
    assert len(opened(wal_dir)[1]) == 2


def test_bit_flip_before_intact_records_in_the_last_segment_is_corruption(
    wal_dir: Path,
) -> None:
    write(wal_dir, [rec(1, i) for i in range(1, 6)])
    (seg,) = segment_files(wal_dir)
    flip(seg, 20)  # inside the first record; four intact ones follow
    with pytest.raises(WalCorruption) as err:
        opened(wal_dir)
    assert err.value.path == seg and err.value.offset == 0


def test_zeroed_sector_before_later_records_is_a_torn_write(wal_dir: Path) -> None:
    # Writeback is unordered within one write: later pages may land, earlier not.
    write(wal_dir, [rec(1, 1), rec(1, 2, b"y" * 3000), rec(1, 3)])
    (seg,) = segment_files(wal_dir)
    with seg.open("r+b") as f:
        f.seek(1024)
        f.write(bytes(512))
    _, replayed = opened(wal_dir)
    assert [r.index for r in replayed] == [1]


def test_bit_flip_in_a_middle_segment_raises(wal_dir: Path) -> None:
    write(wal_dir, [rec(1, i) for i in range(1, 40)], segment_bytes=300)
    first, *rest = segment_files(wal_dir)
    assert rest, "the log should have rotated"
    flip(first, first.stat().st_size - 3)
    with pytest.raises(WalCorruption) as err:
        opened(wal_dir)
    assert err.value.path == first and err.value.reason == "checksum mismatch"


def test_a_missing_segment_is_corruption(wal_dir: Path) -> None:
    write(wal_dir, [rec(1, i) for i in range(1, 40)], segment_bytes=300)
    segment_files(wal_dir)[1].unlink()
    with pytest.raises(WalCorruption, match="missing"):
        opened(wal_dir)


def flip(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x10]))


# ---------------------------------------------------------------------- rotation and GC
def test_each_new_segment_starts_with_the_checkpoint(wal_dir: Path) -> None:
    marker = WalRecord(group=0, kind=9, index=0, body=b"checkpoint")
    write(
        wal_dir, [rec(1, i) for i in range(1, 40)], segment_bytes=300, checkpoint=lambda: [marker]
    )
    segments = segment_files(wal_dir)
    assert len(segments) > 2
    for seg in segments[1:]:
        assert records_in(seg)[0] == marker


def test_gc_deletes_only_a_fully_superseded_prefix(wal_dir: Path) -> None:
    async def go() -> None:
        wal, _ = opened(wal_dir, segment_bytes=300)
        for i in range(1, 30):
            wal.append(rec(1, i))
        wal.append(rec(2, 1))  # group 2 never compacts: pins its segment and later
        for i in range(30, 60):
            wal.append(rec(1, i))
        await wal.sync()
        segments = wal.segments()
        wal.set_compacted(1, 100)
        deleted = wal.gc()
        assert deleted and deleted == segments[: len(deleted)]
        assert all(not p.exists() for p in deleted)
        # What is left starts with the segment holding group 2's entry.
        assert any(r.group == 2 for r in records_in(wal.segments()[0]))
        assert wal.release(10**6) == []  # release() never goes past what GC allows
        wal.set_compacted(2, 1)
        wal.gc()
        assert wal.segments() == [segments[-1]]  # the active segment is never deleted
        await wal.close()

    asyncio.run(go())


def test_release_spares_unsealed_segments(wal_dir: Path) -> None:
    async def go() -> None:
        wal, _ = opened(wal_dir, segment_bytes=300)
        for i in range(1, 30):
            wal.append(rec(1, i))
        wal.set_compacted(1, 100)
        assert wal.collectable() == 0  # nothing is durable yet
        assert wal.release(10**6) == []
        await wal.sync()
        count = len(wal.segments())
        assert count > 2 and len(wal.gc()) == count - 1
        await wal.close()

    asyncio.run(go())


def records_in(segment: Path) -> list[WalRecord]:
    """Replay one segment on its own, from a copy (the live log stays untouched)."""
    copy = segment.parent.with_name(f"copy-of-{segment.name}")
    copy.mkdir()
    (copy / segment.name).write_bytes(segment.read_bytes())
    return opened(copy)[1]
