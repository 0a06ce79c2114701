"""The KV engine's snapshot file format: a shard's keys and idempotency records (or those
of some slots, for a slot move), written durably and verified before anything is loaded.

A fixed-size header (magic, version, kind, shard, applied index, counts, body length,
the body's sha256, and a crc32 of the header itself), then a msgpack stream of records.
Reading checks the header and the whole body's checksum first; records that still turn
out malformed raise SnapshotCorrupt while they are read, so the loader can roll back.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO

import msgpack  # type: ignore[import-untyped]  # ships no type information

from shardset_node.storage.files import atomic_write
from shardset_proto.commands import (
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    CommandError,
    Result,
    check_key,
    decode_result,
)

__all__ = [
    "HEADER_SIZE",
    "KIND_FULL",
    "KIND_SLOTS",
    "Header",
    "SnapshotCorrupt",
    "SnapshotError",
    "SnapshotInfo",
    "SnapshotMismatch",
    "expect_end",
    "expect_kind",
    "idem_records",
    "kv_records",
    "open_records",
    "verify",
    "verify_bytes",
    "write_snapshot",
]

# Snapshot file: a fixed-size header, then a msgpack stream body of ``key_count`` records
# ``[key, value]`` in key order and ``idem_count`` records ``[idem, seq, slot, result]``
# in seq order. Fixed size so it can be written last, over a placeholder, once the
# counts and the body's sha256 are known. The header ends with a crc32 of itself.
MAGIC = b"SSKVSNAP"
VERSION = 1
KIND_FULL, KIND_SLOTS = 0, 1
_HEADER = struct.Struct(">8sHHQQQQQQ32s")
_HEADER_CRC = struct.Struct(">I")
HEADER_SIZE = _HEADER.size + _HEADER_CRC.size
# One record is at most a 1 MiB value plus a key; bound the unpacker's buffer to that.
_MAX_RECORD_BYTES = MAX_VALUE_BYTES + MAX_KEY_BYTES + 64 * 1024
_END = object()


class SnapshotError(Exception):
    """A snapshot file cannot be loaded."""


class SnapshotCorrupt(SnapshotError):
    """The file fails an integrity check; nothing was loaded."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"corrupt snapshot {path}: {reason}")
        self.path = path
        self.reason = reason


class SnapshotMismatch(SnapshotError):
    """An intact snapshot of the wrong kind or of another shard."""


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    path: Path
    shard: int
    applied_index: int
    key_count: int
    idem_count: int
    slots_only: bool  # written by export_slots (a subset of keys) rather than export_snapshot
    body_sha256: str


@dataclass(frozen=True, slots=True)
class Header:
    kind: int
    shard: int
    applied_index: int
    key_count: int
    idem_count: int
    idem_seq: int
    body_len: int
    body_sha256: bytes

    def pack(self) -> bytes:
        head = _HEADER.pack(
            MAGIC,
            VERSION,
            self.kind,
            self.shard,
            self.applied_index,
            self.key_count,
            self.idem_count,
            self.idem_seq,
            self.body_len,
            self.body_sha256,
        )
        return head + _HEADER_CRC.pack(zlib.crc32(head))

    def info(self, path: Path) -> SnapshotInfo:
        return SnapshotInfo(
            path,
            self.shard,
            self.applied_index,
            self.key_count,
            self.idem_count,
            self.kind == KIND_SLOTS,
            self.body_sha256.hex(),
        )


class _Body:
    """Writes msgpack records after the header placeholder, hashing and counting them."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.digest = hashlib.sha256()
        self.length = 0
        self.packer = msgpack.Packer(use_bin_type=True)

    def write_all(self, records: Iterable[Sequence[object]]) -> int:
        count = 0
        for record in records:
            chunk: bytes = self.packer.pack(list(record))
            self.digest.update(chunk)
            self.f.write(chunk)
            self.length += len(chunk)
            count += 1
        return count


def write_snapshot(
    path: Path,
    meta: tuple[int, int, int, int],
    kv: Iterable[Sequence[object]],
    idem: Iterable[Sequence[object]],
) -> Header:
    """Body after a placeholder, then the real header over it, replacing ``path`` durably."""
    kind, shard, applied, idem_seq = meta

    def write(f: BinaryIO) -> Header:
        f.write(bytes(HEADER_SIZE))
        body = _Body(f)
        key_count = body.write_all(kv)
        idem_count = body.write_all(idem)
        header = Header(
            kind,
            shard,
            applied,
            key_count,
            idem_count,
            idem_seq,
            body.length,
            body.digest.digest(),
        )
        f.seek(0)
        f.write(header.pack())
        return header

    return atomic_write(path, write)


def verify(path: Path) -> Header:
    """Check the header and the body's length and sha256 before anything is loaded."""
    try:
        with open(path, "rb") as f:
            header = _parse_header(path, f.read(HEADER_SIZE))
            digest, length = hashlib.sha256(), 0
            while chunk := f.read(1 << 20):
                digest.update(chunk)
                length += len(chunk)
    except OSError as exc:
        raise SnapshotCorrupt(path, f"cannot read: {exc}") from exc
    if length != header.body_len:
        raise SnapshotCorrupt(path, f"body is {length} bytes, header says {header.body_len}")
    if digest.digest() != header.body_sha256:
        raise SnapshotCorrupt(path, "body sha256 does not match the header")
    return header


def verify_bytes(data: bytes, shard: int, source: str = "<received snapshot>") -> Header:
    """A full shard snapshot held in memory (one received from a peer), checked as the
    loader would before it is stored anywhere: the header, the body's length and sha256,
    the kind and shard, then every record (keys, values, order, idempotency records,
    nothing after them). SnapshotCorrupt (or SnapshotMismatch) names what is wrong.
    CPU-bound, about the cost of loading it: run a big one off the event loop."""
    path = Path(source)
    header = _parse_header(path, data[:HEADER_SIZE])
    body = memoryview(data)[HEADER_SIZE:]
    if len(body) != header.body_len:
        raise SnapshotCorrupt(path, f"body is {len(body)} bytes, header says {header.body_len}")
    if hashlib.sha256(body).digest() != header.body_sha256:
        raise SnapshotCorrupt(path, "body sha256 does not match the header")
    expect_kind(path, header, KIND_FULL, shard)
    records = _records(path, io.BytesIO(body))
    for _ in kv_records(path, records, header.key_count):
        pass
    for _ in idem_records(path, records, header.idem_count):
        pass
    expect_end(path, records)
    return header


def _parse_header(path: Path, raw: bytes) -> Header:
    if len(raw) < HEADER_SIZE:
        raise SnapshotCorrupt(path, f"file is {len(raw)} bytes, shorter than the header")
    head, (crc,) = raw[: _HEADER.size], _HEADER_CRC.unpack(raw[_HEADER.size :])
    magic, version, kind, *fields = _HEADER.unpack(head)
    if magic != MAGIC:
        raise SnapshotCorrupt(path, "not a Shardset snapshot (bad magic)")
    if zlib.crc32(head) != crc:
        raise SnapshotCorrupt(path, "header crc32 does not match")
    if version != VERSION or kind not in (KIND_FULL, KIND_SLOTS):
        raise SnapshotCorrupt(path, f"unsupported version {version} / kind {kind}")
    return Header(kind, *fields)


def expect_kind(path: Path, header: Header, kind: int, shard: int | None) -> None:
    if header.kind != kind:
        want = "a full shard snapshot" if kind == KIND_FULL else "a slot export"
        raise SnapshotMismatch(f"{path} is not {want}")
    if shard is not None and header.shard != shard:
        raise SnapshotMismatch(f"{path} is a snapshot of shard {header.shard}, not {shard}")


@contextmanager
def open_records(path: Path) -> Iterator[Iterator[Any]]:
    """The body's records; a msgpack error while reading becomes SnapshotCorrupt."""
    with open(path, "rb") as f:
        f.seek(HEADER_SIZE)
        yield _records(path, f)


def _records(path: Path, f: BinaryIO) -> Iterator[Any]:
    unpacker = msgpack.Unpacker(
        f, raw=False, use_list=True, strict_map_key=True, max_buffer_size=_MAX_RECORD_BYTES
    )
    try:
        yield from unpacker
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise SnapshotCorrupt(path, f"bad record: {exc}") from exc


def _take(path: Path, records: Iterator[Any], count: int, what: str) -> Iterator[Any]:
    got = 0
    for record in islice(records, count):
        got += 1
        yield record
    if got != count:
        raise SnapshotCorrupt(path, f"body ends after {got} of {count} {what}")


def kv_records(path: Path, records: Iterator[Any], count: int) -> Iterator[tuple[bytes, bytes]]:
    prev: bytes | None = None
    for record in _take(path, records, count, "keys"):
        try:
            key, value = record
            check_key(key)
        except (ValueError, TypeError) as exc:
            raise SnapshotCorrupt(path, f"bad key record: {exc}") from exc
        if not isinstance(value, bytes) or len(value) > MAX_VALUE_BYTES:
            raise SnapshotCorrupt(path, f"bad value for key {key!r}")
        # Strictly ascending: the order export writes, and it rules out duplicates.
        if prev is not None and key <= prev:
            raise SnapshotCorrupt(path, f"key {key!r} out of order")
        prev = key
        yield key, value


def idem_records(
    path: Path, records: Iterator[Any], count: int
) -> Iterator[tuple[bytes, int, int, Result]]:
    for record in _take(path, records, count, "idempotency records"):
        try:
            idem, seq, slot, raw = record
            if not (isinstance(idem, bytes) and type(seq) is int and type(slot) is int):
                raise TypeError("field types")
            result = decode_result(raw)
        except (ValueError, TypeError, CommandError) as exc:
            raise SnapshotCorrupt(path, f"bad idempotency record: {exc}") from exc
        yield idem, seq, slot, result


def expect_end(path: Path, records: Iterator[Any]) -> None:
    if next(records, _END) is not _END:
        raise SnapshotCorrupt(path, "records after the counted ones")
