"""Engine PAGE corruption: a SQLite file whose own structure is damaged (issue 15).

Per-row checksums (kvengine.row_crc) catch a changed value, not a damaged b-tree page: a
flipped page-type byte or child pointer makes SQLite raise ``database disk image is
malformed`` (SQLITE_CORRUPT) on whatever read, apply or export touches the page, and a
damaged interior page can route a lookup to the wrong leaf, so a present key reads as
absent with no error at all. No row of such a file can be trusted, so the unit of repair
is the whole engine file, not one shard.

What the node does (why it is safe):

* At open, ``PRAGMA quick_check`` (b-tree structure, page types, cell bounds, key order,
  free list; about 20 ms per 100,000 keys, measured: docs/integrity.md) runs before the
  engine is used. A file that fails it, that SQLite refuses to open, or that a running
  node marked malformed (the marker below) is QUARANTINED: kv.sqlite3 and its -wal/-shm
  are moved into ``corrupt-engine-<time>/`` in the data directory (kept for forensics,
  never read again) and a fresh, empty engine is opened.
* A fresh engine has applied nothing, while each Raft group's applied index restarts at
  its stored snapshot (raft log.py: ``applied = snapshot.meta.index``) and the node
  re-applies every committed entry above it (core.Node._add_group then the host loop).
  ShardMachine.restore imports the stored snapshot because the engine is behind it, and
  ShardMachine.apply skips only entries at or below the ENGINE's applied index, so the
  snapshot plus the log replay rebuild exactly the committed state. Nothing is lost:
  the log always keeps the entries above the last snapshot (compaction takes its
  snapshot from the engine at the applied index), both are checksummed (WAL records,
  snapshot sha256), and a group whose stored snapshot is itself damaged already takes
  the lost-snapshot path (raftstore ``snapshot_corrupt_skipped``: it is marked
  recovering and refilled by its leader). Entries this node had not got yet come from
  the leader as usual. The rebuild costs one replay, bounded by ``compact_every``.
* At run time, SQLITE_CORRUPT (or SQLITE_NOTADB) on any engine call marks the engine
  malformed: the marker file is written first (durably), every later read of every
  shard answers 503 ``replica_corrupt`` and every apply fails (so the Raft loop ends,
  crash-only: the node answers 503 and exits 70), and the engine's ``on_malformed``
  makes the process exit even if no write comes. The restart then quarantines the file
  as above: one restart, never a crash loop, since the next file is a fresh one.

A whole-engine swap inside a running process was not chosen: every group's Raft applied
index would have to be rewound under a live loop (the core has no such operation), and a
shard whose only other replicas are down could then not be rebuilt at all, whereas the
replay from the node's own checksummed log needs no peer.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import structlog

from shardset_node.storage.files import atomic_replace, fsync_dir

__all__ = [
    "ENGINE_QUARANTINE_PREFIX",
    "engine_problem",
    "malformed_reason",
    "marker_path",
    "quarantine_engine",
    "record_malformed",
]

log = structlog.get_logger(__name__)

# Inside the data dir; starts like storage.quarantine's prefix, so a later whole-dir
# quarantine leaves it where it is.
ENGINE_QUARANTINE_PREFIX = "corrupt-engine-"
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26
_MALFORMED_TEXT = ("malformed", "not a database")
_MAX_PROBLEMS = 5  # quick_check lines kept in the reason (it can list thousands)


def malformed_reason(exc: BaseException) -> str | None:
    """Why `exc` says the engine file is damaged (SQLITE_CORRUPT / SQLITE_NOTADB), or
    None for any other error (busy, full disk, a constraint: not damage)."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return None
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return str(exc) if code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB) else None
    text = str(exc)
    return text if any(t in text for t in _MALFORMED_TEXT) else None


def marker_path(engine: Path) -> Path:
    return engine.with_name(engine.name + ".malformed")


def record_malformed(engine: Path, reason: str) -> None:
    """Durably note that `engine` is damaged, so the next open quarantines it even if
    quick_check finds nothing (e.g. a damaged page its checks do not cover)."""
    atomic_replace(marker_path(engine), reason.encode("utf-8", "replace"))


def engine_problem(engine: Path) -> str | None:
    """Why `engine` must not be used (a malformed marker, a failed quick_check, a file
    SQLite refuses), or None if it looks sound or does not exist yet."""
    marker = marker_path(engine)
    if marker.exists():
        return "marked malformed while running: " + marker.read_text("utf-8", "replace")
    if not engine.exists():
        return None
    try:
        db = sqlite3.connect(engine, isolation_level=None)
    except sqlite3.DatabaseError as exc:
        return malformed_reason(exc) or f"cannot open: {exc}"
    try:
        rows = [str(r[0]) for r in db.execute("PRAGMA quick_check").fetchall()]
    except sqlite3.DatabaseError as exc:
        reason = malformed_reason(exc)
        if reason is None:
            raise  # e.g. locked or a full disk: not damage, the caller's error
        return f"quick_check: {reason}"
    finally:
        db.close()
    if rows == ["ok"]:
        return None
    lines = "\n".join(rows).splitlines()
    return "quick_check: " + "; ".join(line for line in lines[:_MAX_PROBLEMS] if line)


def quarantine_engine(engine: Path) -> Path:
    """Move `engine`, its -wal/-shm and its marker into a new ``corrupt-engine-<time>/``
    beside it (renames only, durable before the caller opens a fresh file)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = engine.parent / f"{ENGINE_QUARANTINE_PREFIX}{stamp}"
    n = 0
    while target.exists():
        n += 1
        target = engine.parent / f"{ENGINE_QUARANTINE_PREFIX}{stamp}-{n}"
    target.mkdir()
    marker = marker_path(engine)
    for path in (engine, Path(f"{engine}-wal"), Path(f"{engine}-shm"), marker):
        if path.exists():
            os.replace(path, target / path.name)
    fsync_dir(target)
    fsync_dir(engine.parent)
    return target
