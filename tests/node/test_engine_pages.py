"""Engine PAGE corruption (issue 15): a damaged SQLite page, not a changed row.

Per-row checksums cannot see it: SQLite raises "database disk image is malformed" on
whatever touches the page. Such a file is never served (503 replica_corrupt for every
shard), applies nothing, and is quarantined at the next open (storage/enginecheck.py).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog

from shardset_node.storage.enginecheck import engine_problem, malformed_reason, marker_path
from shardset_node.storage.kvengine import KvEngine, ReplicaCorrupt
from shardset_proto.commands import Put


def _filled(path: Path, keys: int = 3000) -> None:
    with KvEngine(path) as e:
        for batch in range(keys // 500):
            puts = [
                Put(f"k{i:06d}".encode(), b"v" * 100) for i in range(batch * 500, (batch + 1) * 500)
            ]
            e.apply(1, batch + 1, puts)
        e.apply(2, 1, [Put(b"a", b"other shard")])
        e.sync()  # into the main file, where the page is damaged below


def _damaged(tmp_path: Path, damage_leaf: Callable[[Path], int]) -> Path:
    path = tmp_path / "kv.sqlite3"
    _filled(path)
    damage_leaf(path)
    return path


def test_a_malformed_page_is_never_served_and_stops_applies(
    tmp_path: Path, damage_leaf: Callable[[Path], int]
) -> None:
    path = _damaged(tmp_path, damage_leaf)
    told: list[str] = []
    with KvEngine(path) as e:
        e.on_malformed = told.append
        with pytest.raises(ReplicaCorrupt) as err:  # before: sqlite3.DatabaseError (a 500)
            e.scan(1, b"", None, 10_000)
        assert (err.value.status, err.value.code) == (503, "replica_corrupt")
        assert "malformed" in err.value.reason
        assert e.malformed is not None and told == [e.malformed]
        # The whole file is suspect: no shard is served, nothing is applied...
        for read in (lambda: e.get(2, b"a"), lambda: e.get(1, b"k000000")):
            with pytest.raises(ReplicaCorrupt):
                read()
        with pytest.raises(ReplicaCorrupt):
            e.apply(2, 2, [Put(b"b", b"x")])
        with pytest.raises(ReplicaCorrupt):
            e.export_snapshot(2, tmp_path / "snap")
        # ...and the next open knows, even if its quick_check found nothing.
        assert marker_path(path).exists()
        assert told == [e.malformed]  # said once


def test_open_checked_quarantines_a_damaged_file_and_starts_fresh(
    tmp_path: Path, damage_leaf: Callable[[Path], int]
) -> None:
    path = _damaged(tmp_path, damage_leaf)
    assert engine_problem(path) is not None
    with structlog.testing.capture_logs() as logs, KvEngine.open_checked(path) as e:
        assert e.applied_index(1) == 0 and e.get(2, b"a") is None  # fresh
        e.apply(1, 1, [Put(b"k", b"v")])
        assert e.get(1, b"k") == b"v"
    (event,) = [x for x in logs if x["event"] == "engine_quarantined"]
    kept = Path(event["quarantine"])
    assert kept.parent == tmp_path and (kept / "kv.sqlite3").exists()  # kept for forensics
    assert "quick_check" in event["reason"]


def test_open_checked_keeps_a_sound_file(tmp_path: Path) -> None:
    path = tmp_path / "kv.sqlite3"
    _filled(path)
    with KvEngine.open_checked(path) as e:
        assert e.applied_index(1) == 6 and e.get(2, b"a") == b"other shard"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("corrupt")] == []


def test_a_file_marked_malformed_is_quarantined_even_if_quick_check_passes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "kv.sqlite3"
    _filled(path)
    marker_path(path).write_text("database disk image is malformed")
    with KvEngine.open_checked(path) as e:
        assert e.applied_index(1) == 0
    assert not marker_path(path).exists()


def test_only_damage_counts_as_malformed() -> None:
    """A lock, a full disk or a constraint is not damage: such errors are not hidden."""
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (k PRIMARY KEY)")
    db.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(sqlite3.IntegrityError) as constraint:
        db.execute("INSERT INTO t VALUES (1)")
    assert malformed_reason(constraint.value) is None
    assert malformed_reason(sqlite3.OperationalError("database is locked")) is None
    assert malformed_reason(ValueError("malformed")) is None
    assert malformed_reason(sqlite3.DatabaseError("database disk image is malformed"))
