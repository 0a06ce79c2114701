"""A Raft log corrupt in the middle (issue 15): a clear one-line cause, never served.

Without the store-created marker the node stops with exit code 3 and one event naming
the file and offset; with it, the data directory is set aside (kept for forensics)
and the node starts empty, rejoining as a node that lost its volume does.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from pathlib import Path

from shardset_node.storage.quarantine import EXIT_STORAGE_CORRUPT, quarantine_data_dir
from shardset_node.storage.wal import WalRecord, WriteAheadLog
from shardset_proto.shardmap import NodeAddress, bootstrap_map


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _corrupt_mid_log(data_dir: Path) -> tuple[Path, int]:
    wal_dir = data_dir / "raft" / "wal"

    async def write() -> None:
        wal = WriteAheadLog(wal_dir, fsync=False)
        wal.open()
        for i in range(1, 4):
            wal.append(WalRecord(7, 2, 0, [1, 0, i]))
        await wal.close()

    asyncio.run(write())
    (segment,) = sorted(wal_dir.glob("wal-*.log"))
    data = bytearray(segment.read_bytes())
    data[10] ^= 0x01  # inside the first record; intact records follow: not a torn tail
    segment.write_bytes(bytes(data))
    return segment, 0


def test_a_log_corrupt_mid_way_stops_the_node_with_exit_3_and_one_event(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    segment, offset = _corrupt_mid_log(data_dir)
    peer, api = _free_port(), _free_port()
    boot = bootstrap_map(
        {1: NodeAddress(f"127.0.0.1:{peer}", f"http://127.0.0.1:{api}")}, shards=1, replication=1
    )
    (tmp_path / "bootstrap.json").write_bytes(boot.encode())
    argv = [
        sys.executable, "-m", "shardset_node", "--id", "1",
        "--data-dir", str(data_dir), "--peer", f"127.0.0.1:{peer}",
        "--api", f"127.0.0.1:{api}", "--bootstrap", str(tmp_path / "bootstrap.json"),
        "--no-fsync",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_STORAGE_CORRUPT, done.stderr[-2000:]
    out = done.stdout + done.stderr
    assert "Traceback" not in out
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    (event,) = [e for e in events if e.get("event") == "storage_corrupt"]
    assert event["file"] == str(segment) and event["offset"] == offset
    assert event["exit_code"] == EXIT_STORAGE_CORRUPT
    assert segment.exists()  # nothing moved without the store-created marker


def test_quarantine_moves_the_whole_data_directory_aside(tmp_path: Path) -> None:
    (tmp_path / "raft" / "wal").mkdir(parents=True)
    (tmp_path / "raft" / "wal" / "wal-0000000000000001.log").write_bytes(b"x")
    (tmp_path / "kv.sqlite3").write_bytes(b"y")
    (tmp_path / "origin.json").write_text('{"origin": "bootstrap"}')
    first = quarantine_data_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]
    assert (first / "kv.sqlite3").read_bytes() == b"y"
    assert (first / "raft" / "wal" / "wal-0000000000000001.log").exists()
    (tmp_path / "kv.sqlite3").write_bytes(b"z")
    second = quarantine_data_dir(tmp_path)  # an earlier quarantine stays where it is
    assert first.exists() and (second / "kv.sqlite3").read_bytes() == b"z"
    assert first.name.startswith("corrupt-") and second != first
