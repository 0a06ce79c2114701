"""The applied key-value state of a node (the Raft state machine), stored in SQLite.

One SQLite file per node holds every shard replica the node hosts; rows carry their shard
id. Why SQLite in WAL mode with ``synchronous=NORMAL`` and not LMDB: see
``docs/storage-engine.md`` (measured; LMDB also caps keys at 511 bytes).

Durability contract: a committed :meth:`KvEngine.apply` survives a process crash; after a
power loss the engine may come back at an *earlier* applied index, but always with data
that matches that index (SQLite's WAL is atomic). The Raft log therefore must keep
entries above :meth:`KvEngine.applied_index` until :meth:`KvEngine.sync` or a snapshot
export has made them durable.

Integrity: every kv row carries a crc32 of (shard, key, value) (``row_crc``), written with
the row and checked on every read of it (get, scan, a CAS's current value, a snapshot
export, a consistency digest). A row that fails is never served: the read raises
:class:`ReplicaCorrupt` (a retryable 503 ``replica_corrupt``) and the shard is recorded
in :attr:`KvEngine.corrupt` until its state is replaced (import_snapshot, drop_shard).
A whole-file scan at open would be too slow for big stores, so rows are checked lazily.
Schema 1 files (no checksums) get them computed once, at open (schema 2).
A damaged PAGE (SQLite's own structure, not a row) is the whole file's problem:
:meth:`KvEngine.open_checked` quarantines a file that fails ``PRAGMA quick_check`` and a
running engine that meets SQLITE_CORRUPT serves nothing more (storage/enginecheck.py).

Determinism: :meth:`KvEngine.apply` results depend only on the shard's state and the
commands, including the idempotency table, which evicts by per-shard insertion sequence
(not by when a caller chose to batch entries). ``idem_capacity`` must be the same on every
replica of a shard.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import struct
import threading
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog

from shardset_node.storage.enginecheck import (
    engine_problem,
    malformed_reason,
    quarantine_engine,
    record_malformed,
)
from shardset_node.storage.snapshot import (
    KIND_FULL,
    KIND_SLOTS,
    Header,
    SnapshotCorrupt,
    SnapshotInfo,
    expect_end,
    expect_kind,
    idem_records,
    kv_records,
    open_records,
    verify,
    write_snapshot,
)
from shardset_proto.commands import (
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    Cas,
    Command,
    Delete,
    Put,
    Result,
    check_key,
    decode_result,
    encode_result,
    execute,
)
from shardset_proto.errors import ApiError
from shardset_proto.slots import slot_of

log = structlog.get_logger(__name__)

__all__ = [
    "IDEM_CAPACITY",
    "MAX_KEY_BYTES",
    "MAX_VALUE_BYTES",
    "KvEngine",
    "ReplicaCorrupt",
    "ShardDigest",
    "StaleIndex",
    "row_crc",
]

IDEM_CAPACITY = 100_000
_SCHEMA_VERSION = 2  # 2: kv rows carry crc (row_crc)
_SCHEMA = """
CREATE TABLE kv (
    shard INTEGER NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL, crc INTEGER NOT NULL,
    PRIMARY KEY (shard, key)
) WITHOUT ROWID;
CREATE TABLE shard_meta (
    shard INTEGER PRIMARY KEY, applied INTEGER NOT NULL, idem_seq INTEGER NOT NULL
);
-- slot = slot of the command's key, so a slot move can take the records along.
CREATE TABLE idem (
    shard INTEGER NOT NULL, idem BLOB NOT NULL, seq INTEGER NOT NULL,
    slot INTEGER NOT NULL, result BLOB NOT NULL,
    PRIMARY KEY (shard, idem)
) WITHOUT ROWID;
CREATE UNIQUE INDEX idem_by_seq ON idem (shard, seq);
"""
_MAX_SHARD = (1 << 63) - 1  # SQLite INTEGER is signed 64-bit

# A tuple, not the Command union, so the isinstance check is not "always true" to mypy:
# callers can still pass anything at run time.
_COMMAND_TYPES: tuple[type, ...] = (Put, Delete, Cas)


class StaleIndex(ValueError):
    """An apply at an index the shard has already applied (replays must skip these)."""


class ReplicaCorrupt(ApiError):
    """This replica's copy of a shard failed a checksum: nothing of it is served.

    A 503 so clients retry elsewhere (another replica, or the leader once this one has
    handed its leadership over); the node rebuilds the replica from its peers."""

    def __init__(self, shard: int, reason: str) -> None:
        super().__init__(
            503,
            "replica_corrupt",
            f"this replica of shard {shard} is corrupt ({reason}); it is being rebuilt "
            "from its peers: retry, another replica will answer",
            retry_after=1,
            shard=shard,
        )
        self.shard = shard
        self.reason = reason


class _RowCorrupt(Exception):
    """A kv row whose checksum does not match (internal: becomes ReplicaCorrupt)."""

    def __init__(self, shard: int, key: bytes) -> None:
        super().__init__(f"row checksum mismatch at key {key[:64]!r}")
        self.shard = shard
        self.key = key


def row_crc(shard: int, key: bytes, value: bytes) -> int:
    """The checksum a kv row carries: crc32 over the shard, the key's length, the key and
    the value (the length keeps key/value boundaries from aliasing)."""
    head = struct.pack(">QI", shard, len(key))
    return zlib.crc32(value, zlib.crc32(key, zlib.crc32(head)))


def _checked(shard: int, key: bytes, value: bytes, crc: int) -> bytes:
    if row_crc(shard, key, value) != crc:
        raise _RowCorrupt(shard, key)
    return value


class KvEngine:
    """Applied state of every shard replica on one node, in one SQLite file.

    Thread-safe: calls are serialised on one connection; snapshot exports read through
    their own connection so applies can continue meanwhile.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        idem_capacity: int = IDEM_CAPACITY,
        durable_commits: bool = False,
    ) -> None:
        if idem_capacity < 1:
            raise ValueError("idem_capacity must be at least 1")
        self.path = Path(path)
        self.idem_capacity = idem_capacity
        self._lock = threading.Lock()
        self._db = _connect(self.path)
        # shard -> (applied index, idem seq) as committed: this connection is the only
        # writer, so the table is read once per shard, not on every apply.
        self._meta_cache: dict[int, tuple[int, int]] = {}
        # shard -> why: replicas that failed a checksum; nothing of them is served until
        # their state is replaced (import_snapshot, drop_shard).
        self.corrupt: dict[int, str] = {}
        # Why the FILE is damaged (SQLITE_CORRUPT met at run time): then nothing of any
        # shard is served and nothing applied; `on_malformed` tells the process, which
        # restarts and quarantines the file (storage/enginecheck.py).
        self.malformed: str | None = None
        self.on_malformed: Callable[[str], None] = lambda _: None
        # NORMAL: no fsync per commit; the Raft log can replay what a power loss undoes.
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable_commits else 'NORMAL'}")
        self._db.execute("PRAGMA journal_size_limit=67108864")
        _ensure_schema(self._db)

    @classmethod
    def open_checked(cls, path: str | os.PathLike[str], **kwargs: Any) -> KvEngine:
        """The engine at `path`, after ``PRAGMA quick_check``: a damaged file (or one
        marked malformed by a running node) is moved aside first and a fresh one opened;
        the node's Raft groups then replay their snapshot and log into it (why that is
        safe: storage/enginecheck.py)."""
        path = Path(path)
        problem = engine_problem(path)
        if problem is not None:
            moved = quarantine_engine(path)
            log.error(
                "engine_quarantined",
                file=str(path),
                reason=problem,
                quarantine=str(moved),
                action="fresh engine, refilled from the Raft snapshots and log",
            )
        return cls(path, **kwargs)

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> KvEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sync(self) -> None:
        """Make every committed apply durable against power loss (a full WAL checkpoint)."""
        with self._lock:
            busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(FULL)").fetchone()
        if busy:
            raise sqlite3.OperationalError("checkpoint could not finish: a reader is active")

    # -- state machine --------------------------------------------------------------------

    def applied_index(self, shard: int) -> int:
        _check_shard(shard)
        with self._lock, self._guard(shard):
            return self._meta(shard)[0]

    def apply(self, shard: int, index: int, commands: Sequence[Command]) -> list[Result]:
        """Apply ``commands`` in order and record ``index`` as applied, all in one transaction.

        Raises :class:`StaleIndex` if ``index`` is not above the applied index; then
        nothing changes. Results of commands carrying an ``idem`` key already applied are
        the remembered ones, and such commands change nothing.
        """
        _check_shard(shard)
        with self._write(shard) as db:
            applied, seq = self._meta(shard)
            _check_index(shard, index, applied)
            results = []
            for cmd in commands:
                try:
                    result, seq = self._apply_one(db, shard, cmd, seq)
                except _RowCorrupt as exc:
                    # The command read a corrupt current value: its outcome here is
                    # unknowable, so this replica writes nothing for it and is rebuilt.
                    self._mark(shard, str(exc))
                    result = {"error": "replica_corrupt"}  # type: ignore[dict-item]
                results.append(result)
            self._evict(db, shard, seq)
            self._set_meta(db, shard, index, seq)
        return results

    def _apply_one(
        self, db: sqlite3.Connection, shard: int, cmd: Command, seq: int
    ) -> tuple[Result, int]:
        if not isinstance(cmd, _COMMAND_TYPES):
            raise TypeError(f"not a command: {type(cmd).__name__}")
        if cmd.idem is not None:
            # Records at or below seq - capacity count as evicted even while their rows
            # wait for the batch's _evict: the same answers as evicting after each record.
            row = db.execute(
                "SELECT result FROM idem WHERE shard = ? AND idem = ? AND seq > ?",
                (shard, cmd.idem, seq - self.idem_capacity),
            ).fetchone()
            if row is not None:
                return decode_result(row[0]), seq
        if isinstance(cmd, Put):
            # A put needs only whether the key existed: one INSERT for a new key (its row
            # count says so), an UPDATE after it for an existing one; no SELECT first.
            result: Result = {"prev_exists": not _insert_new(db, shard, cmd.key, cmd.value)}
            if result["prev_exists"]:
                _update(db, shard, cmd.key, cmd.value)
        else:
            outcome = execute(cmd, _get(db, shard, cmd.key))  # may raise _RowCorrupt
            if outcome.write:
                _put(db, shard, cmd.key, outcome.value)
            result = outcome.result
        if cmd.idem is not None:
            seq = self._remember(db, shard, seq, (cmd.idem, slot_of(cmd.key), result))
        return result, seq

    def _remember(
        self, db: sqlite3.Connection, shard: int, seq: int, record: tuple[bytes, int, Result]
    ) -> int:
        """Store an idempotency record as number ``seq + 1``; the caller runs :meth:`_evict`
        before its transaction ends (one DELETE per batch rather than one per record)."""
        idem, slot, result = record
        seq += 1
        db.execute(
            "INSERT OR REPLACE INTO idem VALUES (?, ?, ?, ?, ?)",
            (shard, idem, seq, slot, encode_result(result)),
        )
        return seq

    def _evict(self, db: sqlite3.Connection, shard: int, seq: int) -> None:
        """Drop the records beyond the capacity, the newest being number ``seq``."""
        if seq > self.idem_capacity:
            db.execute(
                "DELETE FROM idem WHERE shard = ? AND seq <= ?", (shard, seq - self.idem_capacity)
            )

    # -- reads ----------------------------------------------------------------------------

    def get(self, shard: int, key: bytes) -> bytes | None:
        """The key's value; ReplicaCorrupt if this replica of the shard is corrupt."""
        _check_shard(shard)
        check_key(key)
        with self._lock, self._guard(shard):
            self._refuse_corrupt(shard)
            try:
                return _get(self._db, shard, key)
            except _RowCorrupt as exc:
                raise self._mark(shard, str(exc)) from None

    def scan(
        self, shard: int, start: bytes, end: bytes | None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` pairs with ``start <= key < end`` (no upper bound if ``end`` is
        None), in byte order of the keys."""
        _check_shard(shard)
        check_key(start)
        if end is not None:
            check_key(end)
        if limit < 0:
            raise ValueError("limit must not be negative")
        sql = "SELECT key, value, crc FROM kv WHERE shard = ? AND key >= ?"
        args: tuple[Any, ...] = (shard, start)
        if end is not None:
            sql += " AND key < ?"
            args += (end,)
        with self._lock, self._guard(shard):
            self._refuse_corrupt(shard)
            rows = self._db.execute(sql + " ORDER BY key LIMIT ?", (*args, limit)).fetchall()
            try:
                return [(bytes(k), _checked(shard, k, v, c)) for k, v, c in rows]
            except _RowCorrupt as exc:
                raise self._mark(shard, str(exc)) from None

    # -- integrity ------------------------------------------------------------------------

    def _refuse_corrupt(self, shard: int) -> None:
        if self.malformed is not None:
            raise ReplicaCorrupt(shard, f"engine file malformed: {self.malformed}")
        reason = self.corrupt.get(shard)
        if reason is not None:
            raise ReplicaCorrupt(shard, reason)

    def _mark(self, shard: int, reason: str) -> ReplicaCorrupt:
        """Record `shard` as corrupt here (logged once) and return the error to raise."""
        if shard not in self.corrupt:
            log.error("replica_corrupt", shard=shard, reason=reason, file=str(self.path))
            self.corrupt[shard] = reason
        return ReplicaCorrupt(shard, reason)

    @contextmanager
    def _guard(self, shard: int) -> Iterator[None]:
        """SQLITE_CORRUPT from the file becomes ReplicaCorrupt, the engine malformed."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            reason = malformed_reason(exc)
            if reason is None:
                raise
            raise self._set_malformed(shard, reason) from exc

    def _set_malformed(self, shard: int, reason: str) -> ReplicaCorrupt:
        if self.malformed is None:
            self.malformed = reason
            log.error(
                "engine_malformed",
                shard=shard,
                reason=reason,
                file=str(self.path),
                action="serving nothing; the restart quarantines the file",
            )
            try:
                record_malformed(self.path, reason)  # first: the restart must see it
            finally:
                self.on_malformed(reason)
        return ReplicaCorrupt(shard, f"engine file malformed: {reason}")

    def mark_corrupt(self, shard: int, reason: str) -> None:
        """Record `shard` as corrupt (e.g. outvoted by a consistency check)."""
        with self._lock:
            self._mark(shard, reason)

    def digest_at(self, shard: int) -> ShardDigest:
        """A consistent read view of `shard` at its current applied index (taken now, on
        the caller's thread); its :meth:`ShardDigest.compute` may run in another thread
        while applies go on."""
        _check_shard(shard)
        reader = _connect(self.path)
        reader.execute("BEGIN")
        applied, idem_seq = _read_meta(reader, shard)  # the first read pins the view
        return ShardDigest(self, reader, shard, applied, idem_seq)

    # -- shard lifecycle and slot moves ---------------------------------------------------

    def drop_shard(self, shard: int) -> None:
        """Forget a shard replica entirely (data, applied index, idempotency records)."""
        _check_shard(shard)
        with self._write(shard) as db:
            self._clear_shard(db, shard)
        self.corrupt.pop(shard, None)

    def delete_slots(self, shard: int, index: int, slots: Collection[int]) -> int:
        """Delete the keys (and idempotency records) of ``slots``, recording ``index`` as
        applied in the same transaction: the source's side of a slot move, once
        :meth:`import_slots` has run on the destination. Returns the number of keys."""
        _check_shard(shard)
        wanted = frozenset(slots)
        with self._write(shard) as db:
            applied, seq = self._meta(shard)
            _check_index(shard, index, applied)
            keys = [
                (shard, k)
                for (k,) in db.execute("SELECT key FROM kv WHERE shard = ?", (shard,))
                if slot_of(k) in wanted
            ]
            db.executemany("DELETE FROM kv WHERE shard = ? AND key = ?", keys)
            idems = [
                (shard, i)
                for i, s in db.execute("SELECT idem, slot FROM idem WHERE shard = ?", (shard,))
                if s in wanted
            ]
            db.executemany("DELETE FROM idem WHERE shard = ? AND idem = ?", idems)
            self._set_meta(db, shard, index, seq)
        return len(keys)

    # -- snapshots ------------------------------------------------------------------------

    def export_snapshot(self, shard: int, path: str | os.PathLike[str]) -> SnapshotInfo:
        """Write the shard's whole state at its applied index to ``path`` (atomically)."""
        _check_shard(shard)
        return self._export(shard, Path(path), None)

    def export_slots(
        self, shard: int, slots: Collection[int], path: str | os.PathLike[str]
    ) -> SnapshotInfo:
        """Write only the keys and idempotency records of ``slots``, for a slot move."""
        _check_shard(shard)
        return self._export(shard, Path(path), frozenset(slots))

    def _export(self, shard: int, path: Path, slots: frozenset[int] | None) -> SnapshotInfo:
        # A separate connection in one read transaction: a consistent view at one applied
        # index, without holding the lock (applies go on while a big shard is exported).
        if self.malformed is not None:
            raise ReplicaCorrupt(shard, f"engine file malformed: {self.malformed}")
        reader = _connect(self.path)
        try:
            with self._guard(shard):
                reader.execute("BEGIN")
                applied, idem_seq = _read_meta(reader, shard)
                kv = self.verified(
                    shard,
                    reader.execute(
                        "SELECT key, value, crc FROM kv WHERE shard = ? ORDER BY key", (shard,)
                    ),
                )
                idem = reader.execute(
                    "SELECT idem, seq, slot, result FROM idem WHERE shard = ? ORDER BY seq",
                    (shard,),
                )
                if slots is None:
                    header = write_snapshot(path, (KIND_FULL, shard, applied, idem_seq), kv, idem)
                else:
                    header = write_snapshot(
                        path,
                        (KIND_SLOTS, shard, applied, idem_seq),
                        (r for r in kv if slot_of(r[0]) in slots),
                        (r for r in idem if r[2] in slots),
                    )
        finally:
            reader.close()
        return header.info(path)

    def verified(self, shard: int, rows: Iterator[Any]) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) of (key, value, crc) rows; a snapshot never ships a corrupt row."""
        for k, v, c in rows:
            try:
                yield bytes(k), _checked(shard, k, v, c)
            except _RowCorrupt as exc:
                with self._lock:
                    raise self._mark(shard, str(exc)) from None

    def import_snapshot(self, shard: int, path: str | os.PathLike[str]) -> SnapshotInfo:
        """Replace the shard's whole state with a snapshot from :meth:`export_snapshot`.

        The file is verified first (header crc32, body length and sha256); a failure raises
        :class:`SnapshotCorrupt` and leaves the shard untouched, as does any malformed
        record found while loading (the load is one transaction).
        """
        _check_shard(shard)
        path = Path(path)
        header = verify(path)
        expect_kind(path, header, KIND_FULL, shard)
        with self._write(shard) as db:
            self._clear_shard(db, shard)
            try:
                _load_full(db, shard, path, header)
            except sqlite3.IntegrityError as exc:  # e.g. two records with one seq
                raise SnapshotCorrupt(path, f"inconsistent records: {exc}") from exc
            self._set_meta(db, shard, header.applied_index, header.idem_seq)
        if self.corrupt.pop(shard, None) is not None:
            log.info("replica_rebuilt", shard=shard, applied=header.applied_index)
        return header.info(path)

    def import_slots(self, shard: int, index: int, path: str | os.PathLike[str]) -> SnapshotInfo:
        """Add the keys and idempotency records of an :meth:`export_slots` file to ``shard``,
        recording ``index`` as applied in the same transaction (the destination's side of a
        slot move, applied through its Raft log). Verified first, like import_snapshot."""
        _check_shard(shard)
        path = Path(path)
        header = verify(path)
        expect_kind(path, header, KIND_SLOTS, None)
        with self._write(shard) as db:
            applied, seq = self._meta(shard)
            _check_index(shard, index, applied)
            with open_records(path) as records:
                db.executemany(
                    "INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?)",
                    _rows(shard, kv_records(path, records, header.key_count)),
                )
                # Imported records get this shard's next sequence numbers, in their original
                # order, so eviction stays a function of this shard's own history.
                for idem, _, slot, result in idem_records(path, records, header.idem_count):
                    seq = self._remember(db, shard, seq, (idem, slot, result))
                expect_end(path, records)
            self._evict(db, shard, seq)
            self._set_meta(db, shard, index, seq)
        return header.info(path)

    # -- helpers --------------------------------------------------------------------------

    @contextmanager
    def _write(self, shard: int) -> Iterator[sqlite3.Connection]:
        """Hold the lock for one write transaction of `shard`; roll back on any exception.
        A malformed engine applies nothing (the Raft loop stops, see enginecheck)."""
        with self._lock, self._guard(shard):
            if self.malformed is not None:
                raise ReplicaCorrupt(shard, f"engine file malformed: {self.malformed}")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                # The cache may hold what this transaction set: read it again.
                self._meta_cache.clear()
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _meta(self, shard: int) -> tuple[int, int]:
        meta = self._meta_cache.get(shard)
        if meta is None:
            meta = self._meta_cache[shard] = _read_meta(self._db, shard)
        return meta

    def _set_meta(self, db: sqlite3.Connection, shard: int, applied: int, seq: int) -> None:
        _set_meta(db, shard, applied, seq)
        self._meta_cache[shard] = (applied, seq)

    def _clear_shard(self, db: sqlite3.Connection, shard: int) -> None:
        _clear_shard(db, shard)
        self._meta_cache.pop(shard, None)


# -- SQLite helpers -------------------------------------------------------------------------


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: transactions are explicit (BEGIN/COMMIT in KvEngine._write).
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA busy_timeout=5000")
    return db


def _ensure_schema(db: sqlite3.Connection) -> None:
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version == 0:
        db.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version={_SCHEMA_VERSION}; COMMIT;")
    elif version == 1:
        _add_checksums(db)
    elif version != _SCHEMA_VERSION:
        raise RuntimeError(f"state file has schema version {version}, expected {_SCHEMA_VERSION}")


def _add_checksums(db: sqlite3.Connection) -> None:
    """Schema 1 -> 2, once: every existing row gets its checksum (one transaction, so a
    crash leaves the file at schema 1 and the next open does it again)."""
    db.create_function("row_crc", 3, lambda s, k, v: row_crc(s, k, v), deterministic=True)
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("ALTER TABLE kv ADD COLUMN crc INTEGER NOT NULL DEFAULT 0")
        cur = db.execute("UPDATE kv SET crc = row_crc(shard, key, value)")
        db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    log.info("kv_schema_migrated", version=_SCHEMA_VERSION, rows=cur.rowcount)


def _rows(shard: int, pairs: Iterable[tuple[bytes, bytes]]) -> Iterator[tuple[Any, ...]]:
    """kv table rows, checksums included, for (key, value) pairs of `shard`."""
    return ((shard, k, v, row_crc(shard, k, v)) for k, v in pairs)


def _check_shard(shard: int) -> None:
    if not isinstance(shard, int) or isinstance(shard, bool) or not 0 <= shard <= _MAX_SHARD:
        raise ValueError(f"shard must be an int in [0, 2**63), got {shard!r}")


def _check_index(shard: int, index: int, applied: int) -> None:
    if not isinstance(index, int) or isinstance(index, bool):
        raise TypeError(f"index must be an int, got {index!r}")
    if index <= applied:
        raise StaleIndex(f"shard {shard}: index {index} is not above applied index {applied}")
    if index > _MAX_SHARD:
        raise ValueError(f"index {index} does not fit in 63 bits")


def _read_meta(db: sqlite3.Connection, shard: int) -> tuple[int, int]:
    row = db.execute(
        "SELECT applied, idem_seq FROM shard_meta WHERE shard = ?", (shard,)
    ).fetchone()
    return (0, 0) if row is None else (int(row[0]), int(row[1]))


def _set_meta(db: sqlite3.Connection, shard: int, applied: int, idem_seq: int) -> None:
    db.execute("INSERT OR REPLACE INTO shard_meta VALUES (?, ?, ?)", (shard, applied, idem_seq))


def _get(db: sqlite3.Connection, shard: int, key: bytes) -> bytes | None:
    """The checked value (_RowCorrupt if its checksum fails), None if absent."""
    row = db.execute(
        "SELECT value, crc FROM kv WHERE shard = ? AND key = ?", (shard, key)
    ).fetchone()
    return None if row is None else _checked(shard, key, bytes(row[0]), row[1])


def _put(db: sqlite3.Connection, shard: int, key: bytes, value: bytes | None) -> None:
    if value is None:
        db.execute("DELETE FROM kv WHERE shard = ? AND key = ?", (shard, key))
    else:
        db.execute(
            "INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?)",
            (shard, key, value, row_crc(shard, key, value)),
        )


def _insert_new(db: sqlite3.Connection, shard: int, key: bytes, value: bytes) -> bool:
    """Insert the pair if the key is absent; whether it was."""
    cur = db.execute(
        "INSERT INTO kv VALUES (?, ?, ?, ?) ON CONFLICT (shard, key) DO NOTHING",
        (shard, key, value, row_crc(shard, key, value)),
    )
    return cur.rowcount == 1


def _update(db: sqlite3.Connection, shard: int, key: bytes, value: bytes) -> None:
    db.execute(
        "UPDATE kv SET value = ?, crc = ? WHERE shard = ? AND key = ?",
        (value, row_crc(shard, key, value), shard, key),
    )


def _clear_shard(db: sqlite3.Connection, shard: int) -> None:
    for table in ("kv", "idem", "shard_meta"):
        db.execute(f"DELETE FROM {table} WHERE shard = ?", (shard,))


def _load_full(db: sqlite3.Connection, shard: int, path: Path, header: Header) -> None:
    with open_records(path) as records:
        db.executemany(
            "INSERT INTO kv VALUES (?, ?, ?, ?)",
            _rows(shard, kv_records(path, records, header.key_count)),
        )
        db.executemany(
            "INSERT INTO idem VALUES (?, ?, ?, ?, ?)",
            (
                (shard, i, seq, slot, encode_result(r))
                for i, seq, slot, r in idem_records(path, records, header.idem_count)
            ),
        )
        expect_end(path, records)


class ShardDigest:
    """One shard's state at one applied index, as a digest: blake2b over every kv row
    (checked against its checksum) and every idempotency record, in key / seq order.

    Built by :meth:`KvEngine.digest_at`, which pins a read transaction at the applied
    index; :meth:`compute` may then run in any thread (applies go on meanwhile)."""

    def __init__(
        self, engine: KvEngine, reader: sqlite3.Connection, shard: int, applied: int, seq: int
    ) -> None:
        self.engine = engine
        self.shard = shard
        self.applied = applied
        self._reader = reader
        self._seq = seq

    def compute(self, extra: bytes = b"") -> tuple[str, int]:
        """(hex digest, number of keys); ReplicaCorrupt (and the shard marked) if a row
        fails its checksum. `extra` is hashed too (state kept outside the engine)."""
        h = hashlib.blake2b(digest_size=16)
        h.update(struct.pack(">QQQ", self.shard, self.applied, self._seq) + extra)
        keys = 0
        try:
            with self.engine._guard(self.shard):
                rows = self._reader.execute(
                    "SELECT key, value, crc FROM kv WHERE shard = ? ORDER BY key", (self.shard,)
                )
                for key, value in self.engine.verified(self.shard, rows):
                    h.update(struct.pack(">II", len(key), len(value)) + key + value)
                    keys += 1
                for idem, seq, slot, result in self._reader.execute(
                    "SELECT idem, seq, slot, result FROM idem WHERE shard = ? ORDER BY seq",
                    (self.shard,),
                ):
                    h.update(
                        struct.pack(">IQII", len(idem), seq, slot, len(result)) + idem + result
                    )
        finally:
            self._reader.close()
        return h.hexdigest(), keys
