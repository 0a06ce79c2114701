"""The state machines the node's Raft groups drive.

`ShardMachine` applies key-value commands of one shard to the KV engine; the
engine stores the shard's applied index in the same transaction as the data,
so after a restart entries the engine already holds are skipped, not applied
twice. `MetaMachine` holds the shard map and the store's users (the metadata group).
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shardset_node.config import META_GROUP
from shardset_node.storage.diskspace import is_disk_full
from shardset_node.storage.files import atomic_replace
from shardset_node.storage.kvengine import KvEngine
from shardset_node.storage.snapshot import verify_bytes
from shardset_proto.commands import (
    SYSTEM_PREFIX,
    Command,
    ComputeChecksum,
    decode_check,
    decode_command,
    is_check,
)
from shardset_proto.metadata import (
    MapChange,
    MetaChange,
    PutUserChange,
    decode_change,
    decode_snapshot,
    encode_delete_user,
    encode_map_change,
    encode_put_user,
    encode_snapshot,
)
from shardset_proto.shardmap import ShardMap
from shardset_proto.slots import slot_of
from shardset_proto.status import ConsistencyCheckView
from shardset_proto.users import User, UserTable
from shardset_raft import Entry, EntryType, Snapshot

Ranges = list[tuple[int, int]]

# A shard's snapshot (ShardMachine.snapshot): version 1 is this header, the moved-slot
# ranges (JSON), then the engine's snapshot file. Version 0, written before the ranges
# were part of it, is the engine's file alone (it starts with the engine's own magic).
SNAPSHOT_MAGIC = b"SSSHARD\x00"
SNAPSHOT_VERSION = 1
_SNAPSHOT_HEADER = struct.Struct(">8sHI")  # magic, version, length of the ranges' JSON
# An export retried this many times, each because a slot move changed the ranges while
# it ran, gives up until the next compaction point (moves are rare: one retry is plenty).
_EXPORT_ATTEMPTS = 3
# Digests of consistency checks are computed off the event loop, one at a time per node
# (a check is rare; one worker bounds the CPU it takes from serving).
_DIGESTS = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="digest")
KEEP_CHECKS = 8  # digests kept per shard (by index) for the leader to collect


def encode_shard_snapshot(moved: Ranges, state: bytes) -> bytes:
    ranges = json.dumps(sorted(moved)).encode()
    return _SNAPSHOT_HEADER.pack(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, len(ranges)) + ranges + state


def decode_shard_snapshot(data: bytes) -> tuple[Ranges | None, bytes]:
    """The moved ranges (None in a version 0 snapshot, which has none) and the engine's
    snapshot file."""
    if not data.startswith(SNAPSHOT_MAGIC):
        return None, data
    _, version, size = _SNAPSHOT_HEADER.unpack_from(data)
    if version != SNAPSHOT_VERSION:
        raise ValueError(f"shard snapshot version {version} is not supported")
    start = _SNAPSHOT_HEADER.size
    ranges = json.loads(data[start : start + size])
    return [(int(a), int(b)) for a, b in ranges], data[start + size :]


def check_received_snapshot(group: int, data: bytes) -> None:
    """Raise (ValueError or storage.snapshot.SnapshotError, naming what is wrong) unless
    `data` is a snapshot the group's machine will restore: the shard map and the users
    for the metadata group; for a shard, the moved ranges and an intact engine file of
    that shard (every record checked, as import_snapshot would). The transport calls it
    before a received SNAPSHOT reaches the Raft core, so a damaged or forged one is never
    stored (else the restore would fail after it was, and the node stop: the dead-loop
    path)."""
    if not data:
        return  # "empty": restore drops the shard's state, nothing to check
    if group == META_GROUP:
        decode_snapshot(data)
        return
    moved, state = decode_shard_snapshot(data)
    for start, end in moved or []:
        if not 0 <= start < end:
            raise ValueError(f"moved slot range [{start}, {end}) is empty or negative")
    verify_bytes(state, group)


class EntryNotApplicable(Exception):
    """A committed entry the machine cannot apply; `index` names it (the node stops,
    see replication/group.ApplyFailed)."""

    def __init__(self, index: int, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.index = index


@contextmanager
def _entry(index: int) -> Iterator[None]:
    """Name the entry in what applying it raises (a full disk passes as it is: the host
    retries it)."""
    try:
        yield
    except Exception as exc:
        if is_disk_full(exc):
            raise
        raise EntryNotApplicable(index, exc) from exc


def system_command(op: str, start: int, end: int, **fields: object) -> bytes:
    return SYSTEM_PREFIX + json.dumps({"op": op, "start": start, "end": end, **fields}).encode()


class ShardMachine:
    """One shard's key-value state, and the slots it is handing over or has handed over.

    A slot move is three replicated commands: `freeze` on the source (writes to
    the slots are refused from that log position on, so an export taken after
    it is complete), `ingest` on the destination (the exported keys), and `drop`
    on the source (the keys are deleted; the slots stay refused there for good,
    so a node with an older shard map cannot write into slots it gave away).
    """

    def __init__(self, engine: KvEngine, shard: int, scratch: Path) -> None:
        self.engine = engine
        self.shard = shard
        self.scratch = scratch
        # The moved ranges are part of the snapshot, and kept in this side file too: at a
        # restart the engine is usually past the last snapshot (restore() then keeps the
        # engine's state, and apply() skips the entries it holds), so a freeze applied
        # after that snapshot is known only from here.
        self._moved_path = scratch.parent / f"moved-slots-{shard}.json"
        self.moved: Ranges = self._load_moved()
        # Held while the ranges and the engine change together (a system command, a
        # restore); the version counts those changes, so an export running in another
        # thread can tell whether the ranges it read match the state it exported.
        self._moving_lock = threading.Lock()
        self._moved_version = 0
        # Consistency checks (see _consistency_check): applied index -> digest (hex, keys)
        # being computed or done; and the last check this replica led, for status/metrics.
        self.checks: dict[int, concurrent.futures.Future[tuple[str, int]]] = {}
        self.last_check: ConsistencyCheckView | None = None

    def refuses(self, slot: int) -> bool:
        return any(a <= slot < b for a, b in self.moved)

    def apply(self, entries: Sequence[Entry]) -> list[object]:
        done = self.engine.applied_index(self.shard)
        results: list[object] = [None] * len(entries)
        batch: list[tuple[int, Command]] = []
        for pos, e in enumerate(entries):
            if e.index <= done:
                continue
            if e.type == EntryType.NORMAL and e.data[:1] == SYSTEM_PREFIX:
                self._flush(batch, entries[pos - 1].index if pos else done, results)
                batch = []
                with _entry(e.index):
                    results[pos] = self._system(e.index, json.loads(e.data[1:]))
            elif e.type == EntryType.NORMAL and is_check(e.data):
                self._flush(batch, entries[pos - 1].index if pos else done, results)
                batch = []
                with _entry(e.index):
                    results[pos] = self._consistency_check(e.index, decode_check(e.data))
            elif e.type == EntryType.NORMAL and e.data:
                with _entry(e.index):
                    cmd = decode_command(e.data)
                if self.moved and self.refuses(slot_of(cmd.key)):
                    results[pos] = {"error": "slot_moved"}
                else:
                    batch.append((pos, cmd))
        last = entries[-1].index
        if last > self.engine.applied_index(self.shard):
            self._flush(batch, last, results)
        return results

    def _flush(self, batch: list[tuple[int, Command]], index: int, results: list[object]) -> None:
        if index <= self.engine.applied_index(self.shard):
            return
        applied = self.engine.apply(self.shard, index, [cmd for _, cmd in batch])
        for (pos, _), result in zip(batch, applied, strict=True):
            results[pos] = result

    def _system(self, index: int, cmd: dict[str, Any]) -> object:
        start, end = int(cmd["start"]), int(cmd["end"])
        slots = range(start, end)
        if cmd["op"] == "freeze":
            with self._moving():
                self._set_moved([*self.moved, (start, end)])
                self.engine.apply(self.shard, index, [])
            return {"frozen": [start, end]}
        if cmd["op"] == "drop":
            removed = self.engine.delete_slots(self.shard, index, slots)
            return {"dropped": removed}
        if cmd["op"] == "ingest":
            path = self._scratch_file()
            try:
                path.write_bytes(base64.b64decode(cmd["data"]))
                with self._moving():
                    self._set_moved([r for r in self.moved if r[1] <= start or r[0] >= end])
                    info = self.engine.import_slots(self.shard, index, path)
            finally:
                path.unlink(missing_ok=True)
            return {"ingested": info.key_count}
        raise ValueError(f"unknown system command {cmd['op']!r}")

    # -- consistency checks and rebuilds (issue 15) -----------------------------------------

    def _consistency_check(self, index: int, check: ComputeChecksum) -> object:
        """Apply a check entry: record its index, then digest the state at exactly that
        index (a read transaction pinned here, on the applying thread) in a worker thread."""
        extra = json.dumps(sorted(self.moved)).encode()  # the moved ranges are state too
        self.engine.apply(self.shard, index, [])
        view = self.engine.digest_at(self.shard)
        self.checks[index] = _DIGESTS.submit(view.compute, extra)
        for old in sorted(self.checks)[:-KEEP_CHECKS]:
            del self.checks[old]
        return {"check": check.check_id}

    def install_state(self, index: int, data: bytes) -> bool:
        """Replace a (corrupt) replica's state by a leader's export at `index` (from
        export_state). Refused (False) if the engine is already past `index`: entries it
        applied above it would be lost; the caller asks again for a later export. Runs on
        the applying thread, so no apply interleaves between the check and the import."""
        if index < self.engine.applied_index(self.shard):
            return False
        moved, state = decode_shard_snapshot(data)
        path = self._scratch_file()
        try:
            path.write_bytes(state)
            with self._moving():
                if moved is not None:
                    self._set_moved(moved)
                self.engine.import_snapshot(self.shard, path)
        finally:
            path.unlink(missing_ok=True)
        return True

    @contextmanager
    def _moving(self) -> Iterator[None]:
        with self._moving_lock:
            try:
                yield
            finally:
                self._moved_version += 1

    def _load_moved(self) -> Ranges:
        if not self._moved_path.exists():
            return []
        return [(int(a), int(b)) for a, b in json.loads(self._moved_path.read_text())]

    def _set_moved(self, ranges: Ranges) -> None:
        # Written (durably) before the engine records the command's index, so a crash in
        # between replays the command (both writes are idempotent).
        self.scratch.parent.mkdir(parents=True, exist_ok=True)
        atomic_replace(self._moved_path, json.dumps(sorted(set(ranges))).encode())
        self.moved = sorted(set(ranges))

    def export_slots(self, start: int, end: int) -> bytes:
        path = self._scratch_file()
        try:
            self.engine.export_slots(self.shard, range(start, end), path)
            return path.read_bytes()
        finally:
            path.unlink(missing_ok=True)

    def snapshot(self) -> bytes:
        return self.export_state()[1]

    def export_state(self) -> tuple[int, bytes]:
        """The shard's whole state (moved ranges included) and the applied index it is at.

        Safe off the event loop: the engine exports through its own connection in one
        read transaction, while applies go on (ReplicaGroup compacts with it from a
        thread). The ranges read before the export belong to the exported index only if
        no system command changed them meanwhile; else the export is taken again.
        """
        for _ in range(_EXPORT_ATTEMPTS):
            with self._moving_lock:
                version, moved = self._moved_version, self.moved
            index, state = self._export_engine()
            with self._moving_lock:
                if version == self._moved_version:
                    return index, encode_shard_snapshot(moved, state)
        raise RuntimeError(f"shard {self.shard}: slot moves kept changing during the export")

    def _export_engine(self) -> tuple[int, bytes]:
        path = self._scratch_file()
        try:
            info = self.engine.export_snapshot(self.shard, path)
            return info.applied_index, path.read_bytes()
        finally:
            path.unlink(missing_ok=True)

    def restore(self, snapshot: Snapshot) -> None:
        if self.engine.applied_index(self.shard) >= snapshot.meta.index > 0:
            return  # the engine already holds this state (a restart, not a transfer)
        if not snapshot.data:
            self.engine.drop_shard(self.shard)
            return
        moved, state = decode_shard_snapshot(snapshot.data)
        path = self._scratch_file()
        try:
            path.write_bytes(state)
            with self._moving():
                # The side file first, as for a freeze: a crash before the engine holds
                # the snapshot restores it again at the restart (it is stored already).
                if moved is not None:  # a version 0 snapshot: the side file's ranges stay
                    self._set_moved(moved)
                self.engine.import_snapshot(self.shard, path)
        finally:
            path.unlink(missing_ok=True)

    def _scratch_file(self) -> Path:
        self.scratch.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f"shard-{self.shard}-", dir=self.scratch)
        os.close(fd)
        return Path(name)


class MetaMachine:
    """The shard map, changed only by compare-and-set on its epoch, and the store's users
    (issue 16), put and deleted whole. Entries and snapshots: shardset_proto.metadata."""

    def __init__(self, initial: ShardMap) -> None:
        self.map = initial
        self.users = UserTable()
        # Called with the new map after every change (the node updates its peers).
        self.on_change: Callable[[ShardMap], None] | None = None
        # Called with the new table after every change of the users.
        self.on_users_change: Callable[[UserTable], None] | None = None

    def _set(self, new: ShardMap) -> None:
        self.map = new
        if self.on_change is not None:
            self.on_change(new)

    def _set_users(self, new: UserTable) -> None:
        self.users = new  # swapped whole: a request checked against it sees one table
        if self.on_users_change is not None:
            self.on_users_change(new)

    def apply(self, entries: Sequence[Entry]) -> list[object]:
        results: list[object] = []
        for e in entries:
            if e.type != EntryType.NORMAL or not e.data:
                results.append(None)
                continue
            with _entry(e.index):
                change = decode_change(e.data)
            results.append(self._apply(change))
        return results

    def _apply(self, change: MetaChange) -> dict[str, object]:
        if isinstance(change, MapChange):
            new = change.map
            if change.expect_epoch == self.map.epoch and new.epoch == self.map.epoch + 1:
                self._set(new)
                return {"ok": True, "epoch": new.epoch}
            return {"ok": False, "epoch": self.map.epoch}
        # Idempotent: the same user put twice, or a user deleted that is not there, is ok.
        if isinstance(change, PutUserChange):
            user = change.user
            holder = self.users.holder_of(user.token_sha256) if user.token_sha256 else None
            if holder is not None and holder.name != user.name:
                # A token authenticates one user: refused, deterministically on every node.
                return {"ok": False, "error": "token_in_use", "holder": holder.name}
            changed = self.users.get(user.name) != user
            if changed:
                self._set_users(self.users.put(user))
        else:
            changed = self.users.get(change.name) is not None
            if changed:
                self._set_users(self.users.delete(change.name))
        return {"ok": True, "users": len(self.users.users), "changed": changed}

    def snapshot(self) -> bytes:
        return encode_snapshot(self.map, self.users)

    def restore(self, snapshot: Snapshot) -> None:
        if snapshot.data:
            shard_map, users = decode_snapshot(snapshot.data)
            self._set(shard_map)
            self._set_users(users)

    @staticmethod
    def change(current: ShardMap, new: ShardMap) -> bytes:
        return encode_map_change(current, new)

    @staticmethod
    def put_user(user: User) -> bytes:
        return encode_put_user(user)

    @staticmethod
    def delete_user(name: str) -> bytes:
        return encode_delete_user(name)
