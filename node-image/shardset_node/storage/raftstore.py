"""Durable Raft state for every group of a node, on one shared write-ahead log.

The driver stages many groups' Readies, then awaits ONE :meth:`NodeStorage.sync`
(one fdatasync) before sending any of their messages::

    for group, rd in readies:
        storage.group(group).stage(rd)      # snapshot file, entries, hard state
    await storage.sync()                    # durable for all of them at once
    # ... send, apply, raft.advance(rd) for each

WAL record kinds (body in brackets, all msgpack):

* ``ENTRIES`` ``[[term, index, type, data], ...]``: truncate the log at the first
  index, then append.
* ``HARD_STATE`` ``[term, vote, commit]``.
* ``SNAPSHOT`` ``[index, term, conf]``: a snapshot installed from a leader;
  replaces the whole log. Its data is in ``snap-<group>-<term>-<index>.snap``,
  written and synced before the record is appended.
* ``COMPACT`` ``[index, term, conf]``: a local snapshot (or a checkpoint at the
  head of a segment); drops entries up to ``index``, keeps the rest.

``conf`` is :meth:`ConfState.encode`. A snapshot file is a 20-byte header
``magic "SSNP" | meta length u32 | data length u64 | crc32(meta + data) u32``,
then the meta ``[group, index, term, conf]`` and the data.
"""

from __future__ import annotations

import asyncio
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]  # ships no type information
import structlog

from shardset_node.storage.files import atomic_replace, fsync_dir, temporary_name
from shardset_node.storage.wal import WalError, WalRecord, WriteAheadLog
from shardset_raft.types import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    Ready,
    Snapshot,
    SnapshotMeta,
)

__all__ = ["GroupStorage", "NodeStorage", "RecordKind", "StorageCorruption", "snapshot_name"]

log = structlog.get_logger(__name__)

_SNAP_MAGIC = b"SSNP"
_SNAP_HEADER = struct.Struct("<4sIQI")
_SNAP_RE = re.compile(r"^snap-(\d+)-(\d+)-(\d+)\.snap$")
_KEEP_SNAPSHOTS = 2  # the current one and one older to fall back to


class RecordKind(IntEnum):
    ENTRIES = 1
    HARD_STATE = 2
    SNAPSHOT = 3
    COMPACT = 4


class StorageCorruption(WalError):
    """Intact records that do not add up to a valid Raft log: never served."""


class _BadSnapshot(Exception):
    """A snapshot file that cannot be trusted (internal: the caller falls back)."""


def snapshot_name(group: int, meta: SnapshotMeta) -> str:
    return f"snap-{group}-{meta.term}-{meta.index}.snap"


# ---------------------------------------------------------------------- codecs
def _meta_body(meta: SnapshotMeta) -> list[Any]:
    return [meta.index, meta.term, meta.conf.encode()]


def _meta_from(body: Any) -> SnapshotMeta:
    index, term, conf = body
    return SnapshotMeta(int(index), int(term), ConfState.decode(bytes(conf)))


def _entries_body(entries: tuple[Entry, ...]) -> list[Any]:
    return [[e.term, e.index, int(e.type), e.data] for e in entries]


def _entries_from(body: Any) -> list[Entry]:
    return [Entry(int(t), int(i), EntryType(int(k)), bytes(d)) for t, i, k, d in body]


def _hard_state_from(body: Any) -> HardState:
    # [term, vote, commit] or, for a node recovering a lost tail, [..., recovering].
    term, vote, commit, *rest = body
    if len(rest) > 1:
        raise ValueError("hard state record with more than four fields")
    return HardState(int(term), int(vote), int(commit), int(rest[0]) if rest else 0)


def _hard_state_body(hs: HardState) -> list[int]:
    body = [hs.term, hs.vote, hs.commit]
    return [*body, hs.recovering] if hs.recovering else body


# The fewest bytes one Raft entry takes in an ENTRIES record: msgpack's
# [term, index, type, data] is at least a 1-byte array header, 1-byte term, index
# and type, and a 2-byte empty bin. A cut tail of N bytes held fewer than N/6 entries.
_MIN_ENTRY_BYTES = 6


def lost_tail_bound(last_index: int, cut_bytes: int, orphan_snapshot: int = 0) -> int:
    """The highest index a group may have held before the WAL cut `cut_bytes`.

    The WAL is shared by every group of the node and a damaged record names no
    group, so the cut cannot be attributed: every group is assumed to have lost up
    to all of it (``cut_bytes // 6`` entries past its last surviving one). A
    snapshot file newer than the WAL's snapshot record (written before the record,
    which was cut) shows an installed snapshot was lost too. Conservative on
    purpose: a node that overestimates only abstains longer (until its shard has
    committed past the bound); one that underestimates could vote away
    acknowledged writes. See Raft.recovering for what the core does with it.
    """
    return max(last_index + cut_bytes // _MIN_ENTRY_BYTES + 1, orphan_snapshot)


# ---------------------------------------------------------------------- replay
@dataclass(slots=True)
class _Replayed:
    """One group's state rebuilt from the WAL, with the Disk model's semantics."""

    hard_state: HardState = field(default_factory=HardState)
    meta: SnapshotMeta = field(default_factory=SnapshotMeta)
    has_snapshot: bool = False
    entries: list[Entry] = field(default_factory=list)

    def apply(self, record: WalRecord) -> None:
        kind = record.kind
        if kind == RecordKind.ENTRIES:
            self._append(_entries_from(record.body))
        elif kind == RecordKind.HARD_STATE:
            self.hard_state = _hard_state_from(record.body)
        elif kind == RecordKind.SNAPSHOT:
            self.meta, self.has_snapshot, self.entries = _meta_from(record.body), True, []
        elif kind == RecordKind.COMPACT:
            self._compact(_meta_from(record.body))
        else:
            raise ValueError(f"unknown record kind {kind}")

    def _append(self, entries: list[Entry]) -> None:
        if not entries:
            return
        first = entries[0].index
        while self.entries and self.entries[-1].index >= first:
            self.entries.pop()
        self.entries.extend(entries)

    def _compact(self, meta: SnapshotMeta) -> None:
        # Checkpoints restate the snapshot in force; an older one changes nothing.
        if self.has_snapshot and meta.index < self.meta.index:
            return
        self.meta, self.has_snapshot = meta, True
        self.entries = [e for e in self.entries if e.index > meta.index]

    def last_index(self) -> int:
        return self.entries[-1].index if self.entries else self.meta.index

    def check(self, group: int) -> None:
        """After replay the log must be contiguous from the snapshot (GC may leave
        transient gaps below a later compaction, never in the result)."""
        for expected, e in enumerate(self.entries, start=self.meta.index + 1):
            if e.index != expected:
                raise StorageCorruption(
                    f"group {group}: entry {e.index} where {expected} was expected"
                )


def _replay(records: list[WalRecord]) -> dict[int, _Replayed]:
    groups: dict[int, _Replayed] = {}
    for record in records:
        state = groups.setdefault(record.group, _Replayed())
        try:
            state.apply(record)
        except (TypeError, ValueError) as exc:
            # The WAL's CRC held, so a malformed body is a bug or a foreign writer.
            raise StorageCorruption(f"group {record.group}: bad {record.kind} record") from exc
    for group, state in groups.items():
        state.check(group)
    return groups


# ---------------------------------------------------------------------- snapshot files
def _encode_snapshot(group: int, snapshot: Snapshot) -> bytes:
    meta: bytes = msgpack.packb([group, *_meta_body(snapshot.meta)], use_bin_type=True)
    crc = zlib.crc32(snapshot.data, zlib.crc32(meta))
    header = _SNAP_HEADER.pack(_SNAP_MAGIC, len(meta), len(snapshot.data), crc)
    return header + meta + snapshot.data


def _decode_snapshot(blob: bytes, group: int) -> Snapshot:
    if len(blob) < _SNAP_HEADER.size:
        raise _BadSnapshot("shorter than its header")
    magic, meta_len, data_len, crc = _SNAP_HEADER.unpack_from(blob)
    if magic != _SNAP_MAGIC:
        raise _BadSnapshot("bad magic")
    if _SNAP_HEADER.size + meta_len + data_len != len(blob):
        raise _BadSnapshot("size does not match the header")
    body = memoryview(blob)[_SNAP_HEADER.size :]
    if zlib.crc32(body) != crc:
        raise _BadSnapshot("checksum mismatch")
    try:
        owner, *meta = msgpack.unpackb(body[:meta_len], raw=False)
        snap_meta = _meta_from(meta)
    except (TypeError, ValueError, msgpack.UnpackException) as exc:
        raise _BadSnapshot(f"undecodable meta: {exc}") from exc
    if owner != group:
        raise _BadSnapshot(f"belongs to group {owner}")
    return Snapshot(snap_meta, bytes(body[meta_len:]))


@dataclass(frozen=True, slots=True)
class _SnapFile:
    group: int
    term: int
    index: int
    path: Path


class _SnapshotDir:
    """Snapshot files: atomic durable writes, checked reads, pruning."""

    def __init__(self, directory: Path, *, fsync: bool) -> None:
        self.directory = directory
        self.fsync = fsync

    def write(self, group: int, snapshot: Snapshot) -> Path:
        """All or nothing, and durable when the store fsyncs."""
        path = self.directory / snapshot_name(group, snapshot.meta)
        atomic_replace(path, _encode_snapshot(group, snapshot), fsync=self.fsync)
        return path

    def read(self, group: int, meta: SnapshotMeta) -> Snapshot:
        path = self.directory / snapshot_name(group, meta)
        try:
            blob = path.read_bytes()
        except FileNotFoundError as exc:
            raise _BadSnapshot("missing") from exc
        snapshot = _decode_snapshot(blob, group)
        if snapshot.meta != meta:
            raise _BadSnapshot(f"holds {snapshot.meta}, the log expects {meta}")
        return snapshot

    def files(self, group: int | None = None) -> list[_SnapFile]:
        """Snapshot files, oldest index first."""
        found = []
        for path in self.directory.iterdir():
            m = _SNAP_RE.match(path.name)
            if m and (group is None or int(m.group(1)) == group):
                found.append(_SnapFile(int(m.group(1)), int(m.group(2)), int(m.group(3)), path))
        return sorted(found, key=lambda f: (f.group, f.index, f.term))

    def remove_temporaries(self) -> None:
        # What a crash left of files.atomic_write's temporary files.
        for path in self.directory.glob(temporary_name(Path("*.snap")).name):
            path.unlink(missing_ok=True)

    def quarantine(self, group: int, meta: SnapshotMeta) -> None:
        """Keep a corrupt file for inspection, under a name nothing reads."""
        path = self.directory / snapshot_name(group, meta)
        if path.exists():
            path.replace(path.with_name(path.name + ".corrupt"))

    def prune(self, group: int, durable: SnapshotMeta) -> None:
        """Keep the durable snapshot, one older (a fallback) and any newer ones (a
        write whose WAL record is not durable yet); delete the rest.

        Only files at a LOWER index than the durable snapshot may go. Sorting by
        (index, term) does not tell which file at the durable index the WAL names:
        a crash can leave files at that index with a higher term (their records never
        became durable), and a later pending write may share the index. Counting
        those as "newer" once deleted the durable file itself, so the group came
        back from the empty fallback with no voters.
        """
        older = [f for f in self.files(group) if f.index < durable.index]
        for f in older[: max(0, len(older) - (_KEEP_SNAPSHOTS - 1))]:
            f.path.unlink(missing_ok=True)


# ---------------------------------------------------------------------- storage
@dataclass(frozen=True, slots=True)
class _PendingSnapshot:
    position: int  # WAL record count once its record was appended
    group: int
    meta: SnapshotMeta


class GroupStorage:
    """One Raft group's view of the node's storage."""

    def __init__(
        self,
        node: NodeStorage,
        group_id: int,
        *,
        hard_state: HardState | None = None,
        snapshot: Snapshot | None = None,
        entries: list[Entry] | None = None,
        has_snapshot: bool = False,
    ) -> None:
        self._node = node
        self.group_id = group_id
        self._initial = (hard_state or HardState(), snapshot or Snapshot(), entries or [])
        # What the WAL holds (buffered included): restated by every checkpoint.
        self.hard_state = self._initial[0]
        self.snapshot_meta = self._initial[1].meta
        self.has_snapshot = has_snapshot

    def initial_state(self) -> tuple[HardState, Snapshot, list[Entry]]:
        """What :meth:`NodeStorage.open` recovered, for ``Raft(config, hard_state=...,
        snapshot=..., entries=...)``. Later writes do not change it."""
        hard_state, snapshot, entries = self._initial
        return hard_state, snapshot, list(entries)

    def stage(self, ready: Ready) -> None:
        """Buffer `ready`'s snapshot, entries and hard state, in the contract's order.

        A snapshot's file is written and synced here, before its WAL record, so the
        record never names a file that is not on disk. Durable after the next
        :meth:`NodeStorage.sync`.
        """
        if ready.snapshot is not None:
            self._node._snapshots.write(self.group_id, ready.snapshot)
            self._put_snapshot(RecordKind.SNAPSHOT, ready.snapshot.meta)
        if ready.entries:
            last = ready.entries[-1].index
            body = _entries_body(ready.entries)
            self._node._append(WalRecord(self.group_id, RecordKind.ENTRIES, last, body))
        if ready.hard_state is not None:
            self._put_hard_state(ready.hard_state)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Record a local snapshot (from ``Raft.compact``): its file (written and
        synced here), then a COMPACT record. The log before it becomes garbage once
        that record is durable (after a later :meth:`NodeStorage.sync`)."""
        if self.has_snapshot and snapshot.meta.index <= self.snapshot_meta.index:
            return  # nothing new: an older local snapshot must not shadow a newer one
        self._node._snapshots.write(self.group_id, snapshot)
        self._put_snapshot(RecordKind.COMPACT, snapshot.meta)

    def checkpoint(self) -> Iterator[WalRecord]:
        """Records restating this group's state at the head of a new segment."""
        if self.has_snapshot:
            meta = self.snapshot_meta
            yield WalRecord(self.group_id, RecordKind.COMPACT, meta.index, _meta_body(meta))
        if self.hard_state != HardState():
            yield self._hard_state_record(self.hard_state)

    def _put_snapshot(self, kind: RecordKind, meta: SnapshotMeta) -> None:
        self._node._append(WalRecord(self.group_id, kind, meta.index, _meta_body(meta)))
        self.snapshot_meta, self.has_snapshot = meta, True
        self._node._snapshot_appended(self.group_id, meta)

    def _put_hard_state(self, hard_state: HardState) -> None:
        self._node._append(self._hard_state_record(hard_state))
        self.hard_state = hard_state

    def _hard_state_record(self, hs: HardState) -> WalRecord:
        return WalRecord(self.group_id, RecordKind.HARD_STATE, 0, _hard_state_body(hs))


class NodeStorage:
    """The node's WAL (``<dir>/wal``) and snapshot files (``<dir>/snap``)."""

    def __init__(
        self, directory: Path | str, *, segment_bytes: int = 64 << 20, fsync: bool = True
    ) -> None:
        self.directory = Path(directory)
        self.wal = WriteAheadLog(
            self.directory / "wal",
            segment_bytes=segment_bytes,
            fsync=fsync,
            checkpoint=self._checkpoint,
        )
        self._snapshots = _SnapshotDir(self.directory / "snap", fsync=fsync)
        self._groups: dict[int, GroupStorage] = {}
        self._pending: list[_PendingSnapshot] = []

    async def open(self) -> None:
        """Replay the WAL once, load each group's snapshot, start a fresh segment."""
        for sub in (self.wal.directory, self._snapshots.directory):
            sub.mkdir(parents=True, exist_ok=True)
        if self.wal.fsync:
            fsync_dir(self.directory)  # the new subdirectories' names must survive too
        records = await asyncio.to_thread(self.wal.open)
        replayed = _replay(records)
        lost = self._lost_bounds(replayed)
        loaded = await asyncio.to_thread(self._load_snapshots, replayed)
        for group, state in replayed.items():
            snapshot, repaired = loaded.get(group, (Snapshot(), False))
            if repaired:  # the entries after the lost snapshot are dropped below
                lost[group] = max(lost.get(group, 0), state.last_index())
            self._groups[group] = self._recovered(group, state, snapshot, repaired)
        # A new segment headed by a full checkpoint: the last segment may end in a
        # torn checkpoint, which GC must never rely on.
        self.wal.rotate()
        for group, (_, repaired) in loaded.items():
            if repaired:
                self._record_fallback(self._groups[group])
        self._mark_recovering(lost)
        await self.wal.sync()
        for group, g in self._groups.items():
            self.wal.set_compacted(group, g.snapshot_meta.index)
        log.info(
            "storage_opened",
            directory=str(self.directory),
            groups=len(self._groups),
            records=len(records),
            segments=len(self.wal.segments()),
        )

    def _lost_bounds(self, replayed: dict[int, _Replayed]) -> dict[int, int]:
        """Per group, the index it may have held before a WAL tail cut (none: {})."""
        cut = sum(c.dropped_bytes for c in self.wal.tail_cuts)
        if not self.wal.tail_cuts:
            return {}
        bounds = {}
        for group, state in replayed.items():
            orphans = [f.index for f in self._snapshots.files(group)]
            bounds[group] = lost_tail_bound(state.last_index(), cut, max(orphans, default=0))
        return bounds

    def _mark_recovering(self, lost: dict[int, int]) -> None:
        """Record, durably with the open's sync, which groups recover a lost tail."""
        for group, upto in sorted(lost.items()):
            g = self._groups[group]
            hs = g._initial[0]
            if upto <= hs.recovering:
                continue
            marked = HardState(hs.term, hs.vote, hs.commit, upto)
            g._initial = (marked, g._initial[1], g._initial[2])
            g._put_hard_state(marked)
            log.warning("raft_log_recovering", group=group, recovering_upto=upto)

    def _recovered(
        self, group: int, state: _Replayed, snapshot: Snapshot, repaired: bool
    ) -> GroupStorage:
        entries, hard_state = state.entries, state.hard_state
        if repaired:
            # The log after a lost snapshot no longer connects to what is left.
            entries = []
            commit = min(hard_state.commit, snapshot.meta.index)
            hard_state = HardState(hard_state.term, hard_state.vote, commit)
        return GroupStorage(
            self,
            group,
            hard_state=hard_state,
            snapshot=snapshot,
            entries=entries,
            has_snapshot=state.has_snapshot,
        )

    def _record_fallback(self, g: GroupStorage) -> None:
        """Make the WAL agree with the fallback, so later replays need no repair."""
        hard_state, snapshot, _ = g.initial_state()
        if snapshot == Snapshot():
            self._snapshots.write(g.group_id, snapshot)  # "empty" needs a file too
        g._put_snapshot(RecordKind.SNAPSHOT, snapshot.meta)
        g._put_hard_state(hard_state)

    def _load_snapshots(self, replayed: dict[int, _Replayed]) -> dict[int, tuple[Snapshot, bool]]:
        """Each group's snapshot and whether it fell back from a bad one (blocking)."""
        self._snapshots.remove_temporaries()
        loaded: dict[int, tuple[Snapshot, bool]] = {}
        for group, state in replayed.items():
            if state.has_snapshot:
                loaded[group] = self._load_one(group, state.meta)
                self._drop_orphans(group, state.meta)
        return loaded

    def _load_one(self, group: int, meta: SnapshotMeta) -> tuple[Snapshot, bool]:
        try:
            return self._snapshots.read(group, meta), False
        except _BadSnapshot as exc:
            reason = str(exc)
        self._snapshots.quarantine(group, meta)
        fallback = self._fallback(group, meta)
        log.error(
            "snapshot_corrupt_skipped",
            group=group,
            file=str(self._snapshots.directory / snapshot_name(group, meta)),
            reason=reason,
            fallback_index=fallback.meta.index,
        )
        return fallback, True

    def _fallback(self, group: int, meta: SnapshotMeta) -> Snapshot:
        """The newest intact snapshot older than `meta`, else an empty one."""
        for f in reversed(self._snapshots.files(group)):
            if f.index < meta.index:
                try:
                    return _decode_snapshot(f.path.read_bytes(), group)
                except _BadSnapshot:
                    continue
        return Snapshot()

    def _drop_orphans(self, group: int, meta: SnapshotMeta) -> None:
        """Files newer than the WAL's snapshot lost their record in a crash."""
        for f in self._snapshots.files(group):
            if f.index > meta.index:
                f.path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ groups
    def group(self, group_id: int) -> GroupStorage:
        """The group's storage; a group unknown to the disk starts empty."""
        if group_id < 0:
            raise ValueError(f"group id must be non-negative, got {group_id}")
        g = self._groups.get(group_id)
        if g is None:
            g = self._groups[group_id] = GroupStorage(self, group_id)
        return g

    def group_ids(self) -> list[int]:
        return sorted(self._groups)

    # ------------------------------------------------------------------ durability
    async def sync(self) -> None:
        """Make every group's staged state durable with one WAL flush (shared)."""
        await self.wal.sync()
        self._settle()

    def gc(self) -> list[Path]:
        """Delete WAL segments every group has compacted past; returns them."""
        self._settle()
        return self.wal.gc()

    async def close(self) -> None:
        await self.wal.close()
        self._settle()

    # ------------------------------------------------------------------ internals
    def _append(self, record: WalRecord) -> None:
        self.wal.append(record)

    def _checkpoint(self) -> Iterator[WalRecord]:
        for g in self._groups.values():
            yield from g.checkpoint()

    def _snapshot_appended(self, group: int, meta: SnapshotMeta) -> None:
        self._pending.append(_PendingSnapshot(self.wal.records_appended, group, meta))

    def _settle(self) -> None:
        """Act on snapshots whose WAL record is now durable: only then may the log
        before them (segments, older snapshot files) go."""
        durable = self.wal.records_synced
        done = [p for p in self._pending if p.position <= durable]
        self._pending = [p for p in self._pending if p.position > durable]
        for p in done:
            self.wal.set_compacted(p.group, p.meta.index)
            self._snapshots.prune(p.group, p.meta)
