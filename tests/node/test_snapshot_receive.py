"""A shard snapshot received from a peer is checked before it is stored (issue 15, disk
fault tests: snapshot corruption).

A forged SNAPSHOT with a plausible term and a damaged engine file used to be stored, then
refused when the engine loaded it: the Raft loop died (the dead-loop path) and the node
stopped. Now the transport checks the bytes first (the state machine's own verification)
and drops the message alone, counted and logged; an intact one is still installed.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from shardset_node.config import NodeConfig
from shardset_node.main import NodeProcess, assemble
from shardset_node.peers.transport import PROTOCOL_VERSION
from shardset_node.replication.machines import encode_shard_snapshot
from shardset_node.storage.kvengine import KvEngine
from shardset_proto.commands import Put
from shardset_proto.framing import frame
from shardset_proto.peer import encode_batch
from shardset_proto.shardmap import NodeAddress, ShardMap, bootstrap_map
from shardset_raft.types import ConfState, Message, MessageType, Snapshot, SnapshotMeta

VOTERS = frozenset({1, 2, 3})
INDEX = 50  # a snapshot well past what the lone node holds


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _three_node_map() -> ShardMap:
    nodes = {
        n: NodeAddress(f"127.0.0.1:{_free_port()}", f"http://127.0.0.1:{_free_port()}")
        for n in sorted(VOTERS)
    }
    return bootstrap_map(nodes, 1, 3)


def _engine_file(tmp_path: Path, shard: int, keys: int) -> bytes:
    """A real, intact engine snapshot of `shard` (what a leader would send)."""
    with KvEngine(tmp_path / "leader.sqlite3") as e:
        e.apply(shard, 1, [Put(f"k{i}".encode(), b"value %d" % i) for i in range(keys)])
        e.export_snapshot(shard, tmp_path / "snap")
    return (tmp_path / "snap").read_bytes()


def _damaged(state: bytes) -> bytes:
    """One byte of the body flipped, as a bad disk or a forger would."""
    body = bytearray(state)
    body[-3] ^= 0xFF
    return bytes(body)


def _snapshot_message(shard_state: bytes, term: int) -> Message:
    meta = SnapshotMeta(index=INDEX, term=term, conf=ConfState(VOTERS))
    data = encode_shard_snapshot([], shard_state)
    return Message(
        MessageType.SNAPSHOT, to=1, frm=2, term=term, snapshot=Snapshot(meta=meta, data=data)
    )


async def _send_as_node_2(process: NodeProcess, group: int, m: Message) -> None:
    transport = process.node.transport
    assert transport is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", transport.port)
    hello = struct.pack(">4sHQ", b"SHRD", PROTOCOL_VERSION, 2)
    writer.write(struct.pack(">I", len(hello)) + hello)
    await reader.read(64)  # the acceptor's own hello
    writer.write(frame(encode_batch([(group, m)])))
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()


async def _settled(process: NodeProcess, done: object) -> None:
    """Until the message was dealt with one way or the other (bounded)."""
    for _ in range(200):
        if process.node.host.failure is not None or done():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("keys", [20, 3000])  # inline, and checked in a worker thread
def test_a_damaged_snapshot_from_a_peer_is_dropped_not_stored(tmp_path: Path, keys: int) -> None:
    cfg = NodeConfig(1, tmp_path / "node", "127.0.0.1", _free_port(), _three_node_map())

    async def run() -> None:
        process = assemble(cfg)
        await process.start()
        try:
            shard = next(g for g in process.node.host.groups if g != 0)
            group = process.node.host.groups[shard]
            good = _engine_file(tmp_path, shard, keys)
            transport = process.node.transport
            assert transport is not None
            with capture_logs() as logs:
                await _send_as_node_2(process, shard, _snapshot_message(_damaged(good), 2))
                await _settled(process, lambda: transport.stats.rejected_messages)
            assert process.node.host.failure is None  # before: the loop died restoring it
            assert transport.stats.rejected_snapshots == 1
            assert transport.stats.peer(2).rejected == 1  # shardset_peer_messages_rejected
            assert group.raft.log.meta.index < INDEX  # neither stored nor installed
            (event,) = [e for e in logs if e["event"] == "peer_snapshot_rejected"]
            assert event["group"] == shard and event["index"] == INDEX and event["peer"] == 2
            assert "sha256" in event["reason"], event
            # The same snapshot intact is installed (the check refuses only damage).
            await _send_as_node_2(process, shard, _snapshot_message(good, 3))
            await _settled(process, lambda: group.raft.log.meta.index == INDEX)
            assert process.node.host.failure is None
            assert group.raft.log.meta.index == INDEX
            assert process.node.engine.get(shard, b"k7") == b"value 7"
        finally:
            await process.stop()

    asyncio.run(run())
