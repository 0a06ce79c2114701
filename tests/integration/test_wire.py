"""The binary wire protocol against a real 3-node cluster: the same answers as HTTP,
redirects the client follows, and bad input refused with errors that name the problem."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Coroutine
from typing import Any

import aiohttp
import msgpack
from clusterkit import layout, stable_leaders

from shardset.client import Client
from shardset_proto import framing, wire

TIMEOUT = 90.0


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, TIMEOUT))


class RawWire:
    """A hand-driven wire connection, to send what the client never would."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.frames = framing.FrameReader(limit=framing.MAX_CLIENT_FRAME)
        self.pending: list[bytes] = []

    @classmethod
    async def open(cls, port: int, version: int = wire.VERSION) -> tuple[RawWire, int, int]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        raw = cls(reader, writer)
        writer.write(wire.hello(version, 0))
        their_version, node = wire.parse_hello(await raw.next_frame())
        return raw, their_version, node

    async def next_frame(self) -> bytes:
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(65536), 10.0)
            if not data:
                raise ConnectionError("closed")
            self.pending.extend(self.frames.feed(data))
        return self.pending.pop(0)

    async def ask(self, *requests: list[Any]) -> dict[int, tuple[int, dict[str, Any]]]:
        self.send(msgpack.packb(list(requests), use_bin_type=True))
        return await self.answers(len(requests))

    def send(self, payload: bytes) -> None:
        self.writer.write(framing.frame(payload))

    async def answers(self, n: int) -> dict[int, tuple[int, dict[str, Any]]]:
        got: dict[int, tuple[int, dict[str, Any]]] = {}
        while len(got) < n:
            for rid, status, body in msgpack.unpackb(await self.next_frame(), raw=False):
                got[rid] = (status, body)
        return got

    async def closed(self) -> bool:
        try:
            while True:
                await self.next_frame()
        except ConnectionError:
            return True

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def test_wire_answers_as_http_does(cluster_factory: Any) -> None:
    """Every operation and read mode over the wire gives what HTTP gives for the same
    state: same shard, same index, same value, same consistency and replica fields."""
    cluster = cluster_factory()

    async def scenario() -> None:
        lay = await layout(cluster)
        await stable_leaders(cluster, lay.shards)
        async with (
            Client(cluster.endpoints, protocol="wire") as w,
            Client(cluster.endpoints) as h,
        ):
            put = await w.put("alpha", b"\x00\xffbinary")
            assert put.shard == lay.shard_of("alpha") and put.index > 0
            assert put.extra == {"replica": put.extra["replica"], "prev_exists": False}
            for mode in ("linearizable", "lease", "session", "eventual"):
                rw = await w.get("alpha", consistency=mode)
                rh = await h.get("alpha", consistency=mode, replica=rw.replica)
                assert rw.value == rh.value == b"\x00\xffbinary", mode
                assert (rw.shard, rw.consistency) == (rh.shard, rh.consistency) == (put.shard, mode)
                assert rw.index >= put.index
            bounded = await w.get("alpha", consistency="bounded", max_staleness_ms=1000)
            assert bounded.value == b"\x00\xffbinary" and bounded.staleness_ms is not None
            missing = await w.get("never-written")
            assert missing.value is None and missing.shard == lay.shard_of("never-written")

            failed = await w.cas("alpha", b"wrong", b"new")
            assert failed.extra["ok"] is False
            assert base64.b64decode(failed.extra["current"]) == b"\x00\xffbinary"
            done = await w.cas("alpha", b"\x00\xffbinary", b"new")
            assert done.extra["ok"] is True
            assert (await h.get("alpha")).value == b"new"  # HTTP sees the wire's write
            created = await w.cas("fresh", None, b"first")
            assert created.extra["ok"] is True

            gone = await w.delete("alpha")
            assert gone.extra["existed"] is True
            assert (await h.get("alpha")).value is None
            assert (await w.delete("alpha")).extra["existed"] is False

            # Many requests from many tasks share one connection per node (pipelined).
            keys = [f"many-{i}" for i in range(400)]
            await asyncio.gather(*(w.put(k, k.encode()) for k in keys))
            reads = await asyncio.gather(*(h.get(k) for k in keys))
            assert [r.value for r in reads] == [k.encode() for k in keys]
            assert len(w._conns) <= len(cluster.node_ids)

        # The nodes count what the wire served.
        async with aiohttp.ClientSession() as s:
            served = 0
            for n in cluster.node_ids:
                async with s.get(f"{cluster.node(n).api}/metrics") as resp:
                    text = await resp.text()
                served += int(float(_metric(text, "shardset_wire_requests_total")))
            assert served >= 400 + 10

        # A fresh client's first requests, all at once, share one shard-map fetch.
        async with Client(cluster.endpoints, protocol="wire") as fresh:
            fetches = 0
            fetch = fresh._fetch_any_map

            async def counted() -> None:
                nonlocal fetches
                fetches += 1
                await fetch()

            fresh._fetch_any_map = counted  # type: ignore[method-assign]
            await asyncio.gather(*(fresh.put(f"fresh-{i}", b"x") for i in range(64)))
            assert fetches == 1

    run(scenario())


def test_wire_redirects_and_refuses_bad_input(cluster_factory: Any) -> None:
    cluster = cluster_factory()

    async def scenario() -> None:
        lay = await layout(cluster)
        leaders = await stable_leaders(cluster, lay.shards)
        shard = lay.shard_of("beta")
        follower = next(n for n in lay.replicas[shard] if n != leaders[shard])
        conn, version, node = await RawWire.open(cluster.node(follower).peer_port)
        assert (version, node) == (wire.VERSION, follower)

        # A write at a follower: 307 naming the leader, as over HTTP; nothing written.
        got = await conn.ask([1, "put", "beta", b"v", "idem-1"])
        status, body = got[1]
        assert status == 307 and body["leader"] == leaders[shard], got
        assert body["error"] == "not_leader" and body["shard"] == shard

        big = b"x" * ((1 << 20) + 1)
        got = await conn.ask(
            [2, "frobnicate", "beta"],
            [3, "put", "beta", b"v"],  # one field short
            [4, "put", "", b"v", None],
            [5, "put", "k" * 1025, b"v", None],
            [6, "put", "beta", big, None],
            [7, "get", "beta", "sometimes", None, 0],
            [8, "get", "beta", None, -5, 0],
            [9, "put", "beta", 12, None],
            "not a request",
        )
        assert got[2][0] == 400 and "unknown op 'frobnicate'" in got[2][1]["message"]
        assert got[3][0] == 400 and "put takes 5 fields, got 4" in got[3][1]["message"]
        assert got[4][0] == 400 and got[4][1]["error"] == "bad_key"
        assert got[5][0] == 400 and "got 1025" in got[5][1]["message"]
        assert got[6][0] == 413 and got[6][1]["error"] == "value_too_large"
        assert got[7][0] == 400 and "sometimes" in got[7][1]["message"]
        assert got[8][0] == 400 and "max_staleness_ms" in got[8][1]["message"]
        assert got[9][0] == 400 and "value must be bytes" in got[9][1]["message"]
        assert got[0][0] == 400 and got[0][1]["error"] == "bad_request"

        # A frame that is not msgpack: a 400 naming it; the connection still serves.
        conn.send(b"\xc1\xc1\xc1")
        (status, body) = (await conn.answers(1))[0]
        assert status == 400 and "not msgpack" in body["message"], body
        got = await conn.ask([10, "get", "beta", "eventual", None, 0])
        assert got[10][0] == 404  # never written: the 307 above wrote nothing

        # A frame longer than the limit: refused by name, then the connection is closed.
        conn.writer.write((framing.MAX_CLIENT_FRAME + 1).to_bytes(4, "big"))
        (status, body) = (await conn.answers(1))[0]
        assert status == 400 and "exceeds the limit" in body["message"], body
        assert await conn.closed()
        await conn.close()

        # A client of another protocol version: the node says its own, then hangs up.
        other, version, _ = await RawWire.open(cluster.node(follower).peer_port, version=99)
        assert version == wire.VERSION
        assert await other.closed()
        await other.close()

        # The HTTP API still works beside it, and the node is healthy.
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"{cluster.node(follower).api}/healthz") as resp,
        ):
            assert resp.status == 200

    run(scenario())


def _metric(text: str, name: str) -> str:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return line.split()[1]
    raise AssertionError(f"{name} not in /metrics")
