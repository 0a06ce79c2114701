"""Compare sqlite3 (WAL) and lmdb as the node's applied-state engine.

Both engines get the same layout: one file/env per node, a shard id in front of every key,
and a per-shard "applied index" record written in the same transaction as each batch.
Measured: apply throughput (batches of 1/16/256 commands per transaction), point-read
latency, a 1000-key range scan, snapshot export/import of 100k keys, and on-disk size.

Each apply measurement is capped in time so the whole run stays around a minute on a busy
2-core machine. Run: ``nice .venv/bin/python bench/engine_bench.py [--dir DIR]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import sqlite3
import statistics
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import msgpack  # type: ignore[import-untyped]  # ships no type information

try:
    import lmdb
except ImportError:  # the bench still runs sqlite alone where lmdb is not installed
    lmdb = None  # type: ignore[assignment]

VALUE_BYTES = 256
SNAPSHOT_KEYS = 100_000
APPLY_SECONDS = 1.5  # per (engine, mode, batch size)
APPLY_MAX_COMMANDS = 50_000
READS = 20_000
SCANS = 200
SCAN_LEN = 1000
SHARD = 7

Items = list[tuple[bytes, bytes]]


class Engine(Protocol):
    name: str

    def apply(self, shard: int, index: int, items: Items) -> None: ...
    def get(self, shard: int, key: bytes) -> bytes | None: ...
    def scan(self, shard: int, start: bytes, limit: int) -> Items: ...
    def iter_shard(self, shard: int) -> Iterator[tuple[bytes, bytes]]: ...
    def load(self, shard: int, index: int, items: Iterator[tuple[bytes, bytes]]) -> None: ...
    def size(self) -> tuple[int, int]: ...  # (apparent bytes, allocated bytes)
    def close(self) -> None: ...


def _allocated(paths: list[Path]) -> tuple[int, int]:
    files = [p for p in paths if p.exists()]
    return sum(p.stat().st_size for p in files), sum(p.stat().st_blocks * 512 for p in files)


class SqliteEngine:
    def __init__(self, directory: Path, synchronous: str) -> None:
        self.name = f"sqlite WAL sync={synchronous}"
        self.path = directory / "state.db"
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous}")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS kv (shard INTEGER, key BLOB, value BLOB,"
            " PRIMARY KEY (shard, key)) WITHOUT ROWID"
        )
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (shard INTEGER PRIMARY KEY, applied INT)")

    def apply(self, shard: int, index: int, items: Items) -> None:
        self.db.execute("BEGIN")
        self.db.executemany(
            "INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", [(shard, k, v) for k, v in items]
        )
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (shard, index))
        self.db.execute("COMMIT")

    def get(self, shard: int, key: bytes) -> bytes | None:
        row = self.db.execute(
            "SELECT value FROM kv WHERE shard = ? AND key = ?", (shard, key)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def scan(self, shard: int, start: bytes, limit: int) -> Items:
        rows = self.db.execute(
            "SELECT key, value FROM kv WHERE shard = ? AND key >= ? ORDER BY key LIMIT ?",
            (shard, start, limit),
        )
        return list(rows)

    def iter_shard(self, shard: int) -> Iterator[tuple[bytes, bytes]]:
        yield from self.db.execute(
            "SELECT key, value FROM kv WHERE shard = ? ORDER BY key", (shard,)
        )

    def load(self, shard: int, index: int, items: Iterator[tuple[bytes, bytes]]) -> None:
        self.db.execute("BEGIN")
        self.db.execute("DELETE FROM kv WHERE shard = ?", (shard,))
        self.db.executemany("INSERT INTO kv VALUES (?, ?, ?)", ((shard, k, v) for k, v in items))
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (shard, index))
        self.db.execute("COMMIT")

    def size(self) -> tuple[int, int]:
        # Checkpoint first so the number is the steady-state database, not WAL churn.
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        base = str(self.path)
        return _allocated([self.path, Path(base + "-wal"), Path(base + "-shm")])

    def close(self) -> None:
        self.db.close()


class LmdbEngine:
    def __init__(self, directory: Path, mode: str) -> None:
        assert lmdb is not None
        self.name = f"lmdb {mode}"
        self.dir = directory
        self.env = lmdb.open(
            str(directory),
            map_size=8 << 30,
            max_dbs=4,
            sync=mode != "nosync",
            metasync=mode == "sync",
        )
        self.kv = self.env.open_db(b"kv")
        self.meta = self.env.open_db(b"meta")

    @staticmethod
    def _k(shard: int, key: bytes) -> bytes:
        return struct.pack(">I", shard) + key

    def apply(self, shard: int, index: int, items: Items) -> None:
        with self.env.begin(write=True) as txn:
            for k, v in items:
                txn.put(self._k(shard, k), v, db=self.kv)
            txn.put(struct.pack(">I", shard), struct.pack(">Q", index), db=self.meta)

    def get(self, shard: int, key: bytes) -> bytes | None:
        with self.env.begin(buffers=False) as txn:
            value = txn.get(self._k(shard, key), db=self.kv)
        return None if value is None else bytes(value)

    def scan(self, shard: int, start: bytes, limit: int) -> Items:
        prefix = struct.pack(">I", shard)
        out: Items = []
        with self.env.begin() as txn, txn.cursor(db=self.kv) as cur:
            if not cur.set_range(prefix + start):
                return out
            for k, v in cur:
                if not k.startswith(prefix) or len(out) >= limit:
                    break
                out.append((k[4:], v))
        return out

    def iter_shard(self, shard: int) -> Iterator[tuple[bytes, bytes]]:
        prefix = struct.pack(">I", shard)
        with self.env.begin() as txn, txn.cursor(db=self.kv) as cur:
            if not cur.set_range(prefix):
                return
            for k, v in cur:
                if not k.startswith(prefix):
                    break
                yield k[4:], v

    def load(self, shard: int, index: int, items: Iterator[tuple[bytes, bytes]]) -> None:
        prefix = struct.pack(">I", shard)
        with self.env.begin(write=True) as txn:
            cur = txn.cursor(db=self.kv)
            if cur.set_range(prefix):
                while cur.key().startswith(prefix) and cur.delete():
                    pass
            for k, v in items:
                txn.put(prefix + k, v, db=self.kv)
            txn.put(prefix, struct.pack(">Q", index), db=self.meta)

    def size(self) -> tuple[int, int]:
        return _allocated([self.dir / "data.mdb", self.dir / "lock.mdb"])

    def close(self) -> None:
        self.env.close()


def _key(i: int) -> bytes:
    # 8-16 bytes, spread out so inserts do not all land at the tail of the B-tree.
    return b"k" + hashlib.blake2b(i.to_bytes(8, "big"), digest_size=4).hexdigest().encode()[
        : 7 + i % 9
    ]


def _value(rng: random.Random) -> bytes:
    return rng.randbytes(VALUE_BYTES)


def bench_apply(engine: Engine, batch: int, rng: random.Random) -> float:
    """Commands per second for batches of ``batch`` puts plus the applied-index record.

    Only the engine call is timed; keys and values are made beforehand.
    """
    done, index, spent = 0, 0, 0.0
    values = [_value(rng) for _ in range(64)]
    while spent < APPLY_SECONDS and done < APPLY_MAX_COMMANDS:
        index += 1
        items = [(_key(rng.randrange(1 << 30)), values[i % 64]) for i in range(batch)]
        t = time.perf_counter()
        engine.apply(SHARD + batch, index, items)
        spent += time.perf_counter() - t
        done += batch
    return done / spent


def fill(engine: Engine, rng: random.Random) -> list[bytes]:
    keys = [_key(i) for i in range(SNAPSHOT_KEYS)]
    for i in range(0, SNAPSHOT_KEYS, 1000):
        engine.apply(SHARD, i // 1000 + 1, [(k, _value(rng)) for k in keys[i : i + 1000]])
    return keys


def bench_reads(engine: Engine, keys: list[bytes], rng: random.Random) -> tuple[float, float]:
    """(median, p99) point-read latency in microseconds."""
    samples = []
    for _ in range(READS):
        key = keys[rng.randrange(len(keys))]
        t = time.perf_counter_ns()
        engine.get(SHARD, key)
        samples.append((time.perf_counter_ns() - t) / 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99)]


def bench_scan(engine: Engine, keys: list[bytes], rng: random.Random) -> float:
    """Median milliseconds to read 1000 consecutive keys."""
    samples = []
    for _ in range(SCANS):
        t = time.perf_counter()
        got = engine.scan(SHARD, keys[rng.randrange(len(keys))], SCAN_LEN)
        samples.append((time.perf_counter() - t) * 1000)
        assert got
    return statistics.median(samples)


def export_snapshot(engine: Engine, path: Path) -> None:
    """The same msgpack-stream + sha256 + fsync + rename format for both engines."""
    digest = hashlib.sha256()
    tmp = path.with_suffix(".tmp")
    packer = msgpack.Packer(use_bin_type=True)
    with open(tmp, "wb") as f:
        for k, v in engine.iter_shard(SHARD):
            chunk = packer.pack((k, v))
            digest.update(chunk)
            f.write(chunk)
        f.write(digest.digest())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def import_snapshot(engine: Engine, path: Path) -> None:
    data = path.read_bytes()
    body, want = data[:-32], data[-32:]
    if hashlib.sha256(body).digest() != want:
        raise RuntimeError("checksum mismatch")
    unpacker = msgpack.Unpacker(use_list=False, raw=False)
    unpacker.feed(body)
    engine.load(SHARD, 1_000_000, iter(unpacker))


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run_engine(make: Callable[[Path], Engine], root: Path, full: bool) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(dir=root))
    engine = make(directory)
    rng = random.Random(1)
    res: dict[str, Any] = {"engine": engine.name}
    for batch in (1, 16, 256):
        res[f"apply/{batch}"] = bench_apply(engine, batch, rng)
    if full:
        engine.close()
        shutil.rmtree(directory)
        directory = Path(tempfile.mkdtemp(dir=root))
        engine = make(directory)
        keys = fill(engine, rng)
        res["read"] = bench_reads(engine, keys, rng)
        res["scan"] = bench_scan(engine, keys, rng)
        snap = directory / "snap.bin"
        res["export"] = timed(lambda: export_snapshot(engine, snap))
        res["snap_bytes"] = snap.stat().st_size
        res["import"] = timed(lambda: import_snapshot(engine, snap))
        snap.unlink()
        res["size"] = engine.size()
    engine.close()
    shutil.rmtree(directory)
    return res


def report(rows: list[dict[str, Any]]) -> None:
    print("| engine | apply/1 | apply/16 | apply/256 | get p50/p99 µs | scan 1000 ms"
          " | export 100k s | import 100k s | snapshot MiB | disk MiB (alloc) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [str(r["engine"])] + [f"{r[f'apply/{b}']:,.0f}/s" for b in (1, 16, 256)]
        if "read" in r:
            p50, p99 = r["read"]
            apparent, alloc = r["size"]
            cells += [
                f"{p50:.1f} / {p99:.1f}",
                f"{r['scan']:.2f}",
                f"{r['export']:.2f}",
                f"{r['import']:.2f}",
                f"{r['snap_bytes'] / 2**20:.1f}",
                f"{apparent / 2**20:.1f} ({alloc / 2**20:.1f})",
            ]
        else:
            cells += ["-"] * 6
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="where to put the files (default: a tempdir)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(dir=args.dir))
    # (factory, full): durable modes only get the apply runs; reads/scans/snapshots do not
    # depend on the commit-sync mode, so they are measured once per engine.
    configs: list[tuple[Callable[[Path], Engine], bool]] = [
        (lambda d: SqliteEngine(d, "NORMAL"), True),
        (lambda d: SqliteEngine(d, "FULL"), False),
    ]
    if lmdb is not None:
        configs += [
            (lambda d: LmdbEngine(d, "nometasync"), True),
            (lambda d: LmdbEngine(d, "sync"), False),
            (lambda d: LmdbEngine(d, "nosync"), False),
        ]
        probe = lmdb.open(str(root / "probe"))
        print(f"lmdb {lmdb.version()} max key size: {probe.max_key_size()} bytes")
        probe.close()
    print(f"sqlite {sqlite3.sqlite_version}; value {VALUE_BYTES} B, keys 8-16 B")
    t0 = time.perf_counter()
    try:
        rows = [run_engine(make, root, full) for make, full in configs]
    finally:
        shutil.rmtree(root)
    report(rows)
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
