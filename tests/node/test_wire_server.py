"""The wire server's flow control, over a real loopback socket with stand-in writes and
reads (no Raft): a connection keeps being read however many requests finish together,
a frame over the per-frame limit is refused naming it, a connection over its byte
budget stops being read until its answers are out, and idle or half-sent connections
are closed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import msgpack

from shardset_node.config import WireLimits
from shardset_node.frontends.wire import WireServer
from shardset_node.kv import KvWrites
from shardset_node.reads import ReadPath
from shardset_proto import framing, wire
from shardset_proto.limits import MAX_REQUESTS_PER_FRAME

TIMEOUT = 30.0  # a bound for a test that would otherwise hang, not a speed claim


class _Reads:
    """Stand-in read path: answers at once, or when `gate` opens."""

    def __init__(self) -> None:
        self.gate: asyncio.Event | None = None
        self.calls = 0

    async def get(
        self, key: bytes, mode: str | None, bound: int | None, token: int, path: str
    ) -> dict[str, Any]:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        return {"key": key.decode(), "value": b"v", "index": 1}


class _Raw:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.frames = framing.FrameReader(limit=framing.MAX_CLIENT_FRAME)
        self.pending: list[bytes] = []

    def send(self, requests: list[list[Any]]) -> None:
        self.writer.write(framing.frame(msgpack.packb(requests, use_bin_type=True)))

    async def answers(self, n: int) -> dict[int, tuple[int, dict[str, Any]]]:
        got: dict[int, tuple[int, dict[str, Any]]] = {}
        while len(got) < n:
            while not self.pending:
                data = await asyncio.wait_for(self.reader.read(1 << 16), TIMEOUT)
                if not data:
                    raise ConnectionError(f"closed after {len(got)} of {n} answers")
                self.pending.extend(self.frames.feed(data))
            for rid, status, body in msgpack.unpackb(self.pending.pop(0), raw=False):
                got[rid] = (status, body)
        return got

    async def closed_by_server(self) -> bool:
        data = await asyncio.wait_for(self.reader.read(1 << 16), TIMEOUT)
        while data:
            data = await asyncio.wait_for(self.reader.read(1 << 16), TIMEOUT)
        return True


@asynccontextmanager
async def _served(server: WireServer) -> AsyncIterator[Callable[[], Awaitable[_Raw]]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await server.serve(reader, writer, wire.VERSION)
        finally:
            writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    opened: list[_Raw] = []

    async def connect() -> _Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        raw = _Raw(reader, writer)
        hello = await asyncio.wait_for(reader.readexactly(framing.HEADER_SIZE + 14), TIMEOUT)
        assert wire.parse_hello(hello[framing.HEADER_SIZE :])[0] == wire.VERSION
        opened.append(raw)
        return raw

    try:
        yield connect
    finally:
        for raw in opened:
            raw.writer.close()
        listener.close()


def _server(reads: _Reads, limits: WireLimits | None = None) -> WireServer:
    kv = cast(KvWrites, object())
    return WireServer(
        1, kv, cast(ReadPath, reads), max_value_bytes=1 << 20, limits=limits or WireLimits()
    )


def _gets(first: int, n: int) -> list[list[Any]]:
    return [[i, "get", f"k{i}", "eventual", None, 0] for i in range(first, first + n)]


def test_connection_is_read_again_after_many_requests_finish_at_once() -> None:
    """W1: 8,192 requests that all finished in one loop iteration left the connection
    never read again; every later request waited for the client's timeout."""

    async def scenario() -> None:
        reads = _Reads()
        reads.gate = asyncio.Event()
        limits = WireLimits()
        async with _served(_server(reads, limits)) as connect:
            raw = await connect()
            n = 8 * 1024
            for first in range(0, n, MAX_REQUESTS_PER_FRAME):
                raw.send(_gets(first, MAX_REQUESTS_PER_FRAME))
            while reads.calls < min(n, limits.connection_requests):
                await asyncio.sleep(0.01)
            reads.gate.set()  # every request waiting finishes in the same iteration
            got = await raw.answers(n)
            assert {status for status, _ in got.values()} == {200}
            raw.send(_gets(n, 1))
            assert (await raw.answers(1))[n][0] == 200

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT * 2))


def test_frame_over_the_request_limit_is_refused_naming_it() -> None:
    """W2: a frame of 100,000 gets was served in one go (the loop held for seconds); a
    frame over MAX_REQUESTS_PER_FRAME is now refused unread, and the connection lives."""

    async def scenario() -> None:
        reads = _Reads()
        async with _served(_server(reads)) as connect:
            raw = await connect()
            raw.send(_gets(1, MAX_REQUESTS_PER_FRAME + 1))
            status, body = (await raw.answers(1))[0]
            assert (status, body["error"], body["limit"]) == (
                413,
                "frame_too_large",
                MAX_REQUESTS_PER_FRAME,
            )
            assert str(MAX_REQUESTS_PER_FRAME + 1) in body["message"]
            assert reads.calls == 0
            raw.send(_gets(7, 1))
            assert (await raw.answers(1))[7][0] == 200

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT * 2))


def test_large_frame_yields_to_the_loop_while_it_starts() -> None:
    """W2: the requests of a full frame start a few at a time, so other work of the
    node (its Raft loop) runs between them."""

    async def scenario() -> None:
        reads = _Reads()
        reads.gate = asyncio.Event()
        ticks = 0
        seen: list[int] = []

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        original = reads.get

        async def get(*args: Any) -> dict[str, Any]:
            seen.append(ticks)
            return await original(*args)

        reads.get = get  # type: ignore[method-assign]
        tick_task = asyncio.create_task(ticker())
        async with _served(_server(reads)) as connect:
            raw = await connect()
            raw.send(_gets(0, MAX_REQUESTS_PER_FRAME))
            while reads.calls < MAX_REQUESTS_PER_FRAME:
                await asyncio.sleep(0.01)
            reads.gate.set()
            assert len(await raw.answers(MAX_REQUESTS_PER_FRAME)) == MAX_REQUESTS_PER_FRAME
        tick_task.cancel()
        assert seen[-1] - seen[0] >= MAX_REQUESTS_PER_FRAME // WireLimits().yield_every - 1

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT * 2))


def _stalled_frames(limits: WireLimits, conns: int) -> None:
    """Two frames sent (on one connection, or one each on two), requests held: only the
    first frame is read while the bytes are over the bound; all answered once released."""

    async def scenario() -> None:
        reads = _Reads()
        reads.gate = asyncio.Event()
        async with _served(_server(reads, limits)) as connect:
            raws = [await connect() for _ in range(conns)]
            raws[0].send(_gets(0, 10))
            while reads.calls < 10:
                await asyncio.sleep(0.01)
            raws[-1].send(_gets(10, 10))
            await asyncio.sleep(0.3)  # were the second frame read, its calls would show
            assert reads.calls == 10
            reads.gate.set()
            got = await raws[0].answers(10 if conns == 2 else 20)
            if conns == 2:
                got.update(await raws[1].answers(10))
            assert sorted(got) == list(range(20))

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT * 2))


def test_connection_over_its_byte_bound_is_not_read() -> None:
    _stalled_frames(WireLimits(connection_bytes=100), conns=1)


def test_node_over_its_byte_bound_reads_no_connection() -> None:
    _stalled_frames(WireLimits(node_bytes=100), conns=2)


def test_idle_and_half_sent_connections_are_closed() -> None:
    async def scenario() -> None:
        limits = WireLimits(idle_timeout=0.3, frame_timeout=0.3)
        async with _served(_server(_Reads(), limits)) as connect:
            idle = await connect()
            half = await connect()
            frame = framing.frame(msgpack.packb(_gets(0, 1), use_bin_type=True))
            half.writer.write(frame[:-3])
            assert await idle.closed_by_server()
            assert await half.closed_by_server()

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT * 2))


def test_connection_with_requests_running_is_not_idle() -> None:
    async def scenario() -> None:
        reads = _Reads()
        reads.gate = asyncio.Event()
        async with _served(_server(reads, WireLimits(idle_timeout=0.2))) as connect:
            raw = await connect()
            raw.send(_gets(0, 1))
            await asyncio.sleep(0.6)  # three idle timeouts with a request running
            reads.gate.set()
            assert (await raw.answers(1))[0][0] == 200

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT * 2))
