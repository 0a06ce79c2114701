"""One write-ahead log per node, shared by all of its Raft groups (group commit).

Many groups append records to one buffer; :meth:`WriteAheadLog.sync` writes the
buffer and issues ONE ``fdatasync`` for everything appended so far, so the number
of syncs follows the batch rate, not the number of shards.

On disk: segment files ``wal-<seq:016d>.log``, each a sequence of records::

    magic u32 LE | length u32 LE | payload (length bytes) | crc32 u32 LE

The CRC (zlib.crc32) covers header and payload. The payload is a msgpack array
``[group, kind, index, body]``; the WAL itself understands only ``group`` and
``index`` (the highest Raft index the record carries, for GC), the rest is the
caller's.

Recovery: segments are replayed in order. A bad record at the tail of the LAST
segment is a torn write and is cut off (logged). A bad record anywhere else, or
in the last segment with intact records after it (unless a zeroed sector shows
that the write was torn), is :class:`WalCorruption`: never served.

Every new segment starts with a checkpoint supplied by the owner (each group's
hard state and snapshot marker), so deleting older segments loses nothing that
was not superseded. GC deletes the oldest segments, in order, while every
``(group, max index)`` in them is at or below that group's compacted index.
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import struct
import threading
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]  # ships no type information
import structlog

from shardset_node.storage.diskspace import DiskFull, is_disk_full
from shardset_node.storage.files import fsync_dir, fsync_file

__all__ = ["MAGIC", "TailCut", "WalCorruption", "WalError", "WalRecord", "WriteAheadLog"]

log = structlog.get_logger(__name__)

MAGIC = 0x4C415753  # b"SWAL" read as a little-endian u32
_HEADER = struct.Struct("<II")  # magic, payload length
_CRC = struct.Struct("<I")
_MAGIC_BYTES = _CRC.pack(MAGIC)
_FRAMING = _HEADER.size + _CRC.size
MAX_PAYLOAD = 256 << 20  # larger lengths can only be garbage: treat them as corruption
_SECTOR = 512  # a torn write leaves whole zeroed sectors behind
_SEGMENT_RE = re.compile(r"^wal-(\d{16})\.log$")
_PAYLOAD_ARITY = 4

# A msgpack-encodable value, as the caller's record bodies are built.
Body = Any


class WalError(Exception):
    """The log cannot be used (a failed write or sync poisons it for good)."""


class WalCorruption(WalError):
    """A damaged record where a torn write cannot explain it: never served."""

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        super().__init__(f"{path}: corrupt record at offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


@dataclass(frozen=True, slots=True)
class WalRecord:
    group: int
    kind: int
    index: int  # highest Raft index the record carries (0 if none): GC accounting
    body: Body


@dataclass(frozen=True, slots=True)
class TailCut:
    """A damaged tail :meth:`WriteAheadLog.open` cut off: what it held is unknown."""

    path: Path
    offset: int
    dropped_bytes: int


@dataclass(slots=True)
class _Segment:
    seq: int
    path: Path
    size: int = 0  # bytes written or buffered
    max_index: dict[int, int] = field(default_factory=dict)  # group -> highest index
    sealed: bool = False  # fully written and synced; a successor holds the checkpoint


@dataclass(slots=True)
class _Chunk:
    seq: int
    path: Path
    data: bytearray


def segment_name(seq: int) -> str:
    return f"wal-{seq:016d}.log"


def frame(payload: bytes) -> bytes:
    """One on-disk record around `payload`."""
    header = _HEADER.pack(MAGIC, len(payload))
    return header + payload + _CRC.pack(zlib.crc32(payload, zlib.crc32(header)))


def _parse_at(data: bytes, offset: int) -> tuple[bytes | None, str]:
    """The payload of the record at `offset`, or None and why it is not valid."""
    if len(data) - offset < _HEADER.size:
        return None, "truncated header"
    magic, length = _HEADER.unpack_from(data, offset)
    if magic != MAGIC:
        return None, "bad magic"
    if length > MAX_PAYLOAD:
        return None, f"implausible length {length}"
    end = offset + _FRAMING + length
    if end > len(data):
        return None, "length beyond end of file"
    body_end = end - _CRC.size
    (crc,) = _CRC.unpack_from(data, body_end)
    if crc != zlib.crc32(memoryview(data)[offset:body_end]):
        return None, "checksum mismatch"
    return bytes(data[offset + _HEADER.size : body_end]), ""


def _decode(payload: bytes, path: Path, offset: int) -> WalRecord:
    # The CRC matched, so a payload of the wrong shape is not a torn write but a bug
    # or a foreign file: refuse it wherever it is.
    try:
        item = msgpack.unpackb(payload, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise WalCorruption(path, offset, f"undecodable payload: {exc}") from exc
    if not (isinstance(item, list) and len(item) == _PAYLOAD_ARITY):
        raise WalCorruption(path, offset, "payload is not [group, kind, index, body]")
    group, kind, index, body = item
    if not all(isinstance(v, int) for v in (group, kind, index)):
        raise WalCorruption(path, offset, "non-integer group, kind or index")
    return WalRecord(group, kind, index, body)


def _next_valid(data: bytes, start: int) -> int | None:
    """Offset of the first intact record after `start`, if any."""
    needle = _MAGIC_BYTES
    pos = data.find(needle, start)
    while pos != -1:
        if _parse_at(data, pos)[0] is not None:
            return pos
        pos = data.find(needle, pos + 1)
    return None


def _has_zero_sector(data: bytes, start: int, end: int) -> bool:
    first = -(-start // _SECTOR) * _SECTOR
    zeros = bytes(_SECTOR)
    return any(data[s : s + _SECTOR] == zeros for s in range(first, end - _SECTOR + 1, _SECTOR))


def _is_torn_tail(data: bytes, bad: int) -> bool:
    """Could a crash during an unsynced write have left the damage at `bad`?

    Writes are appended and synced in order, so everything after the first unsynced
    byte is unsynced. Intact records after the damage prove it is not the tail,
    unless a zeroed sector shows pages that never reached the disk (writeback is
    not ordered within one write).
    """
    after = _next_valid(data, bad + 1)
    return after is None or _has_zero_sector(data, bad, after)


class WriteAheadLog:
    """A segmented, checksummed, group-committed log; see the module docstring."""

    def __init__(
        self,
        directory: Path | str,
        *,
        segment_bytes: int = 64 << 20,
        fsync: bool = True,
        checkpoint: Callable[[], Iterable[WalRecord]] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        # Called at each rotation; its records head the new segment.
        self.checkpoint = checkpoint
        self._segments: list[_Segment] = []
        self._pending: list[_Chunk] = []
        self._pending_records = 0
        self._compacted: dict[int, int] = {}
        self._flush_task: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None
        self._opened = False
        self._closed = False
        # Tails cut at open: the owner must treat their records as possibly lost
        # acknowledged state (a torn write and a lying disk look the same).
        self.tail_cuts: list[TailCut] = []
        # Writer-thread state: only the single in-flight flush touches these.
        self._fd: int | None = None
        self._fd_seq = 0
        self._writer: _WriterThread | None = None  # started by the first flush
        # Counters for metrics and benchmarks.
        self.syncs = 0  # flushes, each ending in one fdatasync (two when rotating)
        self.records_appended = 0  # checkpoint records included
        self.records_synced = 0
        self.bytes_synced = 0

    # ------------------------------------------------------------------ opening
    def open(self) -> list[WalRecord]:
        """Replay every segment, cutting a torn tail; blocking (call it in a thread)."""
        if self._opened:
            raise WalError("the log is already open")
        self.directory.mkdir(parents=True, exist_ok=True)
        records: list[WalRecord] = []
        paths = self._segment_paths()
        for i, (seq, path) in enumerate(paths):
            last = i == len(paths) - 1
            # Earlier segments were synced before their successor was created; the
            # last one stays unsealed until a flush has moved past it.
            segment = _Segment(seq, path, sealed=not last)
            records.extend(self._replay(segment, last=last))
            self._segments.append(segment)
        if paths:
            # A process crash leaves unsynced bytes in the page cache that replay just
            # read as if durable: make them so before anything depends on them.
            fsync_file(paths[-1][1])
        self._opened = True
        return records

    def _segment_paths(self) -> list[tuple[int, Path]]:
        found = sorted(
            (int(m.group(1)), self.directory / m.group(0))
            for m in (_SEGMENT_RE.match(p.name) for p in self.directory.iterdir())
            if m
        )
        for (a, _), (b, path) in pairwise(found):
            if b != a + 1:
                raise WalCorruption(path, 0, f"segment {a + 1} is missing")
        return found

    def _replay(self, segment: _Segment, *, last: bool) -> list[WalRecord]:
        data = segment.path.read_bytes()
        records: list[WalRecord] = []
        offset = 0
        while offset < len(data):
            payload, reason = _parse_at(data, offset)
            if payload is None:
                if not (last and _is_torn_tail(data, offset)):
                    raise WalCorruption(segment.path, offset, reason)
                self._cut_tail(segment.path, offset, len(data), reason)
                break
            record = _decode(payload, segment.path, offset)
            self._account(segment, record)
            records.append(record)
            offset += _FRAMING + len(payload)
        segment.size = offset
        return records

    def _cut_tail(self, path: Path, offset: int, size: int, reason: str) -> None:
        log.warning(
            "wal_torn_tail_truncated",
            file=str(path),
            offset=offset,
            reason=reason,
            dropped_bytes=size - offset,
        )
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, offset)
        finally:
            os.close(fd)
        self.tail_cuts.append(TailCut(path, offset, size - offset))

    @staticmethod
    def _account(segment: _Segment, record: WalRecord) -> None:
        if record.index > segment.max_index.get(record.group, 0):
            segment.max_index[record.group] = record.index

    # ------------------------------------------------------------------ appending
    def append(self, record: WalRecord) -> None:
        """Buffer `record`; it is durable once a later :meth:`sync` returns."""
        self._check_usable()
        data = self._encode(record)
        active = self._segments[-1] if self._segments else None
        if active is None or (active.size and active.size + len(data) > self.segment_bytes):
            self.rotate()
        self._put(record, data)

    def rotate(self) -> None:
        """Start a new segment (reusing an empty active one) headed by a checkpoint."""
        self._check_usable()
        active = self._segments[-1] if self._segments else None
        if active is None or active.size:
            seq = active.seq + 1 if active else 1
            self._segments.append(_Segment(seq, self.directory / segment_name(seq)))
        for record in self.checkpoint() if self.checkpoint else ():
            self._put(record, self._encode(record))

    def _encode(self, record: WalRecord) -> bytes:
        payload: bytes = msgpack.packb(
            [record.group, record.kind, record.index, record.body], use_bin_type=True
        )
        if len(payload) > MAX_PAYLOAD:
            raise ValueError(f"record of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
        return frame(payload)

    def _put(self, record: WalRecord, data: bytes) -> None:
        segment = self._segments[-1]
        if not self._pending or self._pending[-1].seq != segment.seq:
            self._pending.append(_Chunk(segment.seq, segment.path, bytearray()))
        self._pending[-1].data += data
        segment.size += len(data)
        self._account(segment, record)
        self._pending_records += 1
        self.records_appended += 1

    # ------------------------------------------------------------------ syncing
    async def sync(self) -> None:
        """Make everything appended before this call durable.

        Group commit: one flush is in flight at a time; a caller arriving during it
        waits for the next one, which takes everything buffered by then.
        """
        self._check_usable()
        target = self.records_appended
        while self.records_synced < target:
            if self._flush_task is None:
                self._flush_task = asyncio.get_running_loop().create_task(self._flush())
            # Shielded: a cancelled caller must not cancel a flush others wait on.
            await asyncio.shield(self._flush_task)

    async def _flush(self) -> None:
        chunks, count = self._pending, self._pending_records
        self._pending, self._pending_records = [], 0
        try:
            if self._writer is None:
                self._writer = _WriterThread(self._write)
            await self._writer.run(chunks)
        except DiskFull:
            self._requeue(chunks, count)
            raise
        except BaseException as exc:
            # After a failed write or fsync the page cache state is unknown
            # (fsyncgate): refuse all further use rather than guess.
            self._failed = exc
            log.error("wal_write_failed", directory=str(self.directory), error=repr(exc))
            raise
        finally:
            self._flush_task = None
        self.syncs += 1
        self.records_synced += count
        self.bytes_synced += sum(len(c.data) for c in chunks)
        for segment in self._segments:
            # The writer moves through segments in order and syncs each it leaves.
            if segment.seq < self._fd_seq:
                segment.sealed = True

    def _requeue(self, chunks: list[_Chunk], count: int) -> None:
        """A flush found the disk full and undid its writes (see _write): its records
        are pending again, ahead of anything appended since, for the next sync. Nothing
        of them counts as synced; the log stays usable."""
        # Copies: the failed write's traceback may still hold views of the old buffers,
        # which could then not grow.
        again = [_Chunk(c.seq, c.path, bytearray(c.data)) for c in chunks]
        self._pending = again + self._pending
        self._pending_records += count

    def _write(self, chunks: list[_Chunk]) -> None:
        """Writer thread: write and sync `chunks`, or, when the disk is full, none of
        them: every file is cut back to its size before this flush and DiskFull raised
        (any other failure propagates and poisons the log, see _flush)."""
        before: list[tuple[Path, int]] = []  # each file written, and its size before
        try:
            self._write_chunks(chunks, before)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            # A full disk refuses a write (or a delayed allocation at fdatasync): the
            # bytes past `size` were never made durable, and are written again on retry.
            for path, size in reversed(before):
                os.truncate(path, size)
            raise DiskFull(f"write-ahead log {self.directory}", exc) from exc

    def _write_chunks(self, chunks: list[_Chunk], before: list[tuple[Path, int]]) -> None:
        """Append chunks in order, syncing each segment it leaves."""
        created = False
        for chunk in chunks:
            if self._fd is None or chunk.seq != self._fd_seq:
                self._switch_file(chunk)
                created = True
            assert self._fd is not None
            before.append((chunk.path, os.fstat(self._fd).st_size))
            _write_all(self._fd, chunk.data)
        if self._fd is not None and self.fsync:
            os.fdatasync(self._fd)
        if created and self.fsync:
            fsync_dir(self.directory)  # the new segment's name must survive a crash

    def _switch_file(self, chunk: _Chunk) -> None:
        if self._fd is not None:
            # The old segment is complete before the new one gets a byte.
            if self.fsync:
                os.fdatasync(self._fd)
            fd, self._fd = self._fd, None  # closed: never reused if the open fails
            os.close(fd)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        self._fd = os.open(chunk.path, flags, 0o644)
        self._fd_seq = chunk.seq

    # ------------------------------------------------------------------ GC
    def set_compacted(self, group: int, index: int) -> None:
        """`group`'s entries up to `index` are captured by a DURABLE snapshot."""
        if index > self._compacted.get(group, 0):
            self._compacted[group] = index

    def collectable(self) -> int:
        """Highest segment seq that GC may delete (0 if none): an oldest-first prefix."""
        upto = 0
        for segment in self._segments:
            if not segment.sealed or not self._superseded(segment):
                break
            upto = segment.seq
        return upto

    def _superseded(self, segment: _Segment) -> bool:
        return all(m <= self._compacted.get(g, 0) for g, m in segment.max_index.items())

    def release(self, upto_seq: int) -> list[Path]:
        """Delete segments with seq <= `upto_seq`, but never past :meth:`collectable`
        (a segment still holding live state stays); returns the deleted paths."""
        upto_seq = min(upto_seq, self.collectable())
        deleted: list[Path] = []
        while self._segments and self._segments[0].seq <= upto_seq:
            segment = self._segments[0]
            segment.path.unlink(missing_ok=True)
            deleted.append(segment.path)
            self._segments.pop(0)
        if deleted:
            log.info("wal_segments_released", upto_seq=upto_seq, count=len(deleted))
        return deleted

    def gc(self) -> list[Path]:
        return self.release(self.collectable())

    # ------------------------------------------------------------------ misc
    def segments(self) -> list[Path]:
        return [s.path for s in self._segments]

    async def close(self) -> None:
        if self._closed:
            return
        if self._failed is None and self._opened:
            try:
                await self.sync()
            except DiskFull as exc:
                # Never synced, so never acknowledged: a restart does without them.
                log.warning(
                    "wal_closed_with_unsynced_records",
                    directory=str(self.directory),
                    records=self._pending_records,
                    error=str(exc),
                )
        self._closed = True
        if self._writer is not None:
            self._writer.stop()
            self._writer = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise WalError("the log failed earlier and cannot be used") from self._failed
        if not self._opened or self._closed:
            raise WalError("the log is not open")


class _WriterThread:
    """One long-lived thread doing the log's writes and fdatasyncs, off the event loop.

    Cheaper per flush than asyncio.to_thread (no executor work item, context copy or
    chained concurrent future): a queue put there, one call_soon_threadsafe back.
    """

    def __init__(self, write: Callable[[list[_Chunk]], None]) -> None:
        self._write = write
        self._queue: queue.SimpleQueue[
            tuple[asyncio.AbstractEventLoop, asyncio.Future[None], list[_Chunk]] | None
        ] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="wal-writer", daemon=True)
        self._thread.start()

    def run(self, chunks: list[_Chunk]) -> asyncio.Future[None]:
        """Resolves once `chunks` are written and synced (or with the error)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._queue.put((loop, fut, chunks))
        return fut

    def stop(self) -> None:
        """After the last flush has completed: end the thread."""
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        while (item := self._queue.get()) is not None:
            loop, fut, chunks = item
            error: BaseException | None = None
            try:
                self._write(chunks)
            except BaseException as exc:
                error = exc
            try:
                loop.call_soon_threadsafe(_settle, fut, error)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return


def _settle(fut: asyncio.Future[None], error: BaseException | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)


def _write_all(fd: int, data: bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
