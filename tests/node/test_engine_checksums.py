"""Engine row checksums: a row changed behind the engine's back is never served."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from shardset_node.storage.kvengine import KvEngine, ReplicaCorrupt
from shardset_proto.commands import Cas, Delete, Put


def _tamper(path: Path, shard: int, key: bytes, value: bytes) -> None:
    """Change a value with sqlite3 directly, as a flipped disk byte would (crc untouched)."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("UPDATE kv SET value = ? WHERE shard = ? AND key = ?", (value, shard, key))
    finally:
        db.close()


def _filled(path: Path) -> None:
    with KvEngine(path) as e:
        e.apply(1, 1, [Put(b"a", b"one"), Put(b"b", b"two"), Put(b"c", b"three")])
        e.apply(2, 1, [Put(b"a", b"other shard")])


def test_corrupt_value_is_never_served_by_get_or_scan(tmp_path: Path) -> None:
    path = tmp_path / "kv.sqlite3"
    _filled(path)
    _tamper(path, 1, b"b", b"twO")
    with KvEngine(path) as e:
        assert e.get(1, b"a") == b"one"  # rows are checked lazily, one by one
        with pytest.raises(ReplicaCorrupt) as err:
            e.get(1, b"b")
        assert (err.value.status, err.value.code, err.value.extra["shard"]) == (
            503,
            "replica_corrupt",
            1,
        )
        assert 1 in e.corrupt
        # Once known corrupt, nothing of the replica is served, not even intact rows...
        with pytest.raises(ReplicaCorrupt):
            e.get(1, b"a")
        with pytest.raises(ReplicaCorrupt):
            e.scan(1, b"", None, 10)
        # ...while the other shards are.
        assert e.get(2, b"a") == b"other shard"


def test_scan_finds_a_corrupt_row(tmp_path: Path) -> None:
    path = tmp_path / "kv.sqlite3"
    _filled(path)
    _tamper(path, 1, b"c", b"thrEe")
    with KvEngine(path) as e:
        assert e.scan(1, b"", b"c", 10) == [(b"a", b"one"), (b"b", b"two")]
        with pytest.raises(ReplicaCorrupt):
            e.scan(1, b"", None, 10)


def test_a_cas_on_a_corrupt_row_writes_nothing_and_marks_the_replica(tmp_path: Path) -> None:
    path = tmp_path / "kv.sqlite3"
    _filled(path)
    _tamper(path, 1, b"a", b"onE")
    with KvEngine(path) as e:
        results = e.apply(1, 2, [Cas(b"a", b"onE", b"x"), Delete(b"b")])
        assert results == [{"error": "replica_corrupt"}, {"existed": True}]
        assert e.applied_index(1) == 2
        assert 1 in e.corrupt


def test_snapshot_export_never_ships_a_corrupt_row(tmp_path: Path) -> None:
    path = tmp_path / "kv.sqlite3"
    _filled(path)
    _tamper(path, 1, b"b", b"tw0")
    with KvEngine(path) as e:
        with pytest.raises(ReplicaCorrupt):
            e.export_snapshot(1, tmp_path / "snap")
        assert 1 in e.corrupt


def test_a_snapshot_from_a_healthy_replica_rebuilds_a_corrupt_one(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.sqlite3", tmp_path / "bad.sqlite3"
    _filled(good)
    _filled(bad)
    _tamper(bad, 1, b"b", b"tw0")
    with KvEngine(good) as g, KvEngine(bad) as b:
        g.export_snapshot(1, tmp_path / "snap")
        with pytest.raises(ReplicaCorrupt):
            b.get(1, b"b")
        b.import_snapshot(1, tmp_path / "snap")
        assert 1 not in b.corrupt
        assert b.scan(1, b"", None, 10) == g.scan(1, b"", None, 10)


def test_digest_agrees_on_equal_state_and_catches_corruption(tmp_path: Path) -> None:
    a, b = tmp_path / "a.sqlite3", tmp_path / "b.sqlite3"
    _filled(a)
    _filled(b)
    with KvEngine(a) as ea, KvEngine(b) as eb:
        da, db_ = ea.digest_at(1), eb.digest_at(1)
        assert da.applied == db_.applied == 1
        assert da.compute() == db_.compute()
        eb.apply(1, 2, [Put(b"z", b"more")])
        assert ea.digest_at(1).compute()[0] != eb.digest_at(1).compute()[0]
    _tamper(a, 1, b"c", b"thr33")
    with KvEngine(a) as ea:
        with pytest.raises(ReplicaCorrupt):
            ea.digest_at(1).compute()
        assert 1 in ea.corrupt


def test_digest_is_of_the_state_at_the_index_it_was_taken(tmp_path: Path) -> None:
    with KvEngine(tmp_path / "a.sqlite3") as e, KvEngine(tmp_path / "b.sqlite3") as f:
        e.apply(1, 1, [Put(b"k", b"v")])
        f.apply(1, 1, [Put(b"k", b"v")])
        view = e.digest_at(1)
        e.apply(1, 2, [Put(b"k", b"later")])  # applies go on while the digest is computed
        assert view.compute() == f.digest_at(1).compute()


def test_schema_1_file_gets_checksums_once_at_open(tmp_path: Path) -> None:
    path = tmp_path / "kv.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(
        """
        CREATE TABLE kv (shard INTEGER NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL,
            PRIMARY KEY (shard, key)) WITHOUT ROWID;
        CREATE TABLE shard_meta (shard INTEGER PRIMARY KEY, applied INTEGER NOT NULL,
            idem_seq INTEGER NOT NULL);
        CREATE TABLE idem (shard INTEGER NOT NULL, idem BLOB NOT NULL, seq INTEGER NOT NULL,
            slot INTEGER NOT NULL, result BLOB NOT NULL, PRIMARY KEY (shard, idem)) WITHOUT ROWID;
        CREATE UNIQUE INDEX idem_by_seq ON idem (shard, seq);
        INSERT INTO kv VALUES (1, x'6b31', x'7631'), (1, x'6b32', x'7632');
        INSERT INTO shard_meta VALUES (1, 7, 0);
        PRAGMA user_version=1;
        """
    )
    db.close()
    with KvEngine(path) as e:
        assert e.scan(1, b"", None, 10) == [(b"k1", b"v1"), (b"k2", b"v2")]
        assert e.applied_index(1) == 7
        e.apply(1, 8, [Put(b"k3", b"v3")])
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone() == (2,)
    db.close()
    _tamper(path, 1, b"k1", b"V1")
    # Reopened: migrated already, and the check still holds.
    with KvEngine(path) as e, pytest.raises(ReplicaCorrupt):
        e.get(1, b"k1")
