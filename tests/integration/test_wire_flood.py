"""The wire protocol under a flood, against a real one-node store: the project's own
client sends 10,000 concurrent reads and the node keeps answering afterwards (W1), and
a frame of 100,000 requests is refused naming the per-frame limit while the node goes
on serving (W2)."""

from __future__ import annotations

import asyncio

import msgpack
import pytest

from shardset import local
from shardset.client import Client
from shardset_proto import framing, wire
from shardset_proto.limits import MAX_REQUESTS_PER_FRAME

TIMEOUT = 120.0  # bounds a hang; not a speed claim


@pytest.fixture(scope="module")
def node(one_node_store: local.LocalCluster) -> local.LocalCluster:
    return one_node_store


def test_client_keeps_being_answered_after_10000_concurrent_reads(
    node: local.LocalCluster,
) -> None:
    async def scenario() -> None:
        async with Client(node.endpoints, protocol="wire") as c:
            await c.put("flood", b"v")
            reads = await asyncio.gather(
                *(c.get("flood", consistency="eventual") for _ in range(10_000))
            )
            assert {r.value for r in reads} == {b"v"}
            after = await c.get("flood", consistency="eventual")
            assert after.value == b"v"

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))


def test_frame_of_100000_requests_is_refused_and_the_node_serves_on(
    node: local.LocalCluster,
) -> None:
    async def scenario() -> None:
        port = node.nodes[0].peer_port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        frames = framing.FrameReader(limit=framing.MAX_CLIENT_FRAME)
        writer.write(wire.hello(wire.VERSION, 0))
        gets = [[i, "get", f"k{i}", "eventual", None, 0] for i in range(1, 100_001)]
        writer.write(framing.frame(msgpack.packb(gets, use_bin_type=True)))
        writer.write(framing.frame(msgpack.packb([gets[0]], use_bin_type=True)))
        answers: list[list[object]] = []
        while len(answers) < 2:
            data = await reader.read(1 << 16)
            assert data, "the node closed the connection"
            for payload in frames.feed(data):
                if payload[:4] == b"SHKV":
                    continue  # the node's hello
                answers.extend(msgpack.unpackb(payload, raw=False))
        (rid, status, body), (rid2, status2, _) = answers[0], answers[1]
        assert (rid, status, body["error"]) == (0, 413, "frame_too_large")  # type: ignore[index]
        assert body["limit"] == MAX_REQUESTS_PER_FRAME  # type: ignore[index]
        assert (rid2, status2) in ((1, 404), (1, 200))
        writer.close()
        async with Client(node.endpoints) as c:
            assert (await c.put("after-flood", b"ok")).index > 0

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))
