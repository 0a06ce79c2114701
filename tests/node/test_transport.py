"""Peer transport and fault proxy over real loopback sockets.

Every test runs one event loop under a hard timeout, and every wait inside polls a
condition with its own timeout, so a broken transport fails the test instead of hanging.
Assertions are on counters and contents, never on elapsed time.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import struct
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from structlog.testing import capture_logs

from shardset_node.faults import FaultProxy
from shardset_node.peers.transport import PROTOCOL_VERSION, Transport, TransportConfig
from shardset_proto.commands import Put, encode_command
from shardset_proto.framing import frame
from shardset_proto.peer import encode_batch
from shardset_raft.types import Entry, Message, MessageType

# Unclosed sockets or transports surface as ResourceWarnings: make them failures.
pytestmark = pytest.mark.filterwarnings("error")

LOCAL = "127.0.0.1"
GROUP = 1  # a shard's group
Item = tuple[int, Message]


_live: list[Transport | FaultProxy] = []  # stopped after each test, even a failed one


def run(test: Callable[[], Coroutine[Any, Any, None]], timeout: float = 60.0) -> None:
    async def guarded() -> None:
        try:
            await asyncio.wait_for(test(), timeout)
        finally:
            for thing in reversed(_live):
                await asyncio.wait_for(thing.stop(), 20.0)  # stop() is idempotent
            _live.clear()

    asyncio.run(guarded())
    gc.collect()  # so a leaked transport warns inside this test, not a later one


async def eventually(cond: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.005)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what or cond}") from None


async def repeat_until(
    action: Callable[[], None], cond: Callable[[], bool], timeout: float = 10.0
) -> None:
    """Retry a send until it lands: messages sent into a broken connection may be lost."""

    async def loop() -> None:
        while not cond():
            action()
            await asyncio.sleep(0.02)

    await asyncio.wait_for(loop(), timeout)


class Inbox:
    def __init__(self) -> None:
        self.batches: list[tuple[int, list[Item]]] = []

    def __call__(self, from_node: int, items: list[Item]) -> None:
        self.batches.append((from_node, items))

    def items(self, from_node: int | None = None) -> list[Item]:
        return [i for f, b in self.batches if from_node in (None, f) for i in b]


def holds(inbox: Inbox, count: int) -> Callable[[], bool]:
    return lambda: len(inbox.items()) == count


def msg(i: int, to: int = 2, frm: int = 1, size: int = 8) -> Message:
    # A real command: the receiving transport checks what every entry holds. Shard
    # groups only (GROUP and up): the metadata group's entries are shard-map changes.
    data = encode_command(Put(b"k", bytes(size)))
    entry = Entry(term=1, index=i + 1, data=data)
    return Message(MessageType.APPEND, to=to, frm=frm, term=1, index=i, entries=(entry,))


async def node(
    node_id: int,
    inbox: Inbox,
    peers: dict[int, tuple[str, int]] | None = None,
    config: TransportConfig | None = None,
    port: int = 0,
) -> Transport:
    t = Transport(node_id, LOCAL, port, peers or {}, inbox, config=config)
    _live.append(t)
    await t.start()
    return t


def addr(t: Transport | FaultProxy) -> tuple[str, int]:
    return (LOCAL, t.port)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        port: int = s.getsockname()[1]
    return port


async def stop_all(*things: Transport | FaultProxy) -> None:
    for thing in things:
        await thing.stop()


def test_messages_arrive_in_order_and_batched() -> None:
    async def body() -> None:
        inbox = Inbox()
        b = await node(2, inbox)
        a = await node(1, Inbox(), {2: addr(b)})
        a.send(2, GROUP, [msg(0)])  # warm up: connect and handshake before measuring batching
        await eventually(lambda: len(inbox.items()) == 1)
        for i in range(1, 1001):
            a.send(2, GROUP + i % 7, [msg(i)])
        await eventually(lambda: len(inbox.items()) == 1001, what="1000 messages")
        got = inbox.items(from_node=1)[1:]
        assert [m.index for _, m in got] == list(range(1, 1001))
        assert [g for g, _ in got] == [GROUP + i % 7 for i in range(1, 1001)]
        # One loop iteration of sends leaves as one frame (two if a drain intervened).
        assert b.peer_stats(1).frames_received <= 3
        assert a.peer_stats(2).frames_sent == b.peer_stats(1).frames_received
        assert a.peer_stats(2).messages_sent == 1001
        assert a.peer_stats(2).bytes_sent == b.peer_stats(1).bytes_received
        await stop_all(a, b)

    run(body)


def test_three_nodes_full_mesh() -> None:
    async def body() -> None:
        inboxes = {n: Inbox() for n in (1, 2, 3)}
        ts = {n: await node(n, inboxes[n]) for n in (1, 2, 3)}
        for t in ts.values():
            t.update_peers({n: addr(o) for n, o in ts.items()})  # self is ignored
        for n, t in ts.items():
            for peer in ts.keys() - {n}:
                t.send(peer, GROUP + n, [msg(i, to=peer, frm=n) for i in range(50)])
        for n, inbox in inboxes.items():
            await eventually(holds(inbox, 100))
            for peer in ts.keys() - {n}:
                got = inbox.items(from_node=peer)
                assert [m.index for _, m in got] == list(range(50))
                assert {(g, m.frm, m.to) for g, m in got} == {(GROUP + peer, peer, n)}
        await stop_all(*ts.values())

    run(body)


def test_reconnects_after_peer_restarts() -> None:
    async def body() -> None:
        inbox = Inbox()
        b = await node(2, inbox)
        a = await node(1, Inbox(), {2: addr(b)})
        a.send(2, GROUP, [msg(0)])
        await eventually(lambda: len(inbox.items()) == 1)
        port = b.port
        await b.stop()
        await eventually(lambda: a.peer_stats(2).connect_failures > 0, what="a failed redial")
        inbox2 = Inbox()
        b2 = await node(2, inbox2, port=port)
        await repeat_until(lambda: a.send(2, GROUP, [msg(1)]), lambda: bool(inbox2.items()))
        assert a.peer_stats(2).reconnects >= 1
        await stop_all(a, b2)

    run(body)


def test_down_peer_does_not_block_and_drops_are_counted() -> None:
    async def body() -> None:
        inbox = Inbox()
        b = await node(2, inbox)
        config = TransportConfig(queue_limit=100)
        a = await node(1, Inbox(), {2: addr(b), 3: (LOCAL, free_port())}, config)
        for i in range(1000):
            a.send(3, GROUP, [msg(i, to=3)])  # returns at once although node 3 is down
            if i % 20 == 0:
                a.send(2, GROUP, [msg(i)])
        assert a.peer_stats(3).drops >= 900  # overflow of the bounded queue, oldest first
        await eventually(lambda: len(inbox.items()) == 50, what="traffic to the live peer")
        await eventually(lambda: a.peer_stats(3).connect_failures > 0)
        # A failed dial discards what was queued for the unreachable peer.
        assert a.peer_stats(3).drops == 1000
        assert a.peer_stats(3).messages_sent == 0
        assert a.peer_stats(2).drops == 0
        await stop_all(a, b)

    run(body)


def test_queue_overflow_keeps_the_newest() -> None:
    async def body() -> None:
        inbox = Inbox()
        b = await node(2, inbox)
        a = await node(1, Inbox(), {2: addr(b)}, TransportConfig(queue_limit=10))
        a.send(2, GROUP, [msg(i) for i in range(25)])  # before the connection exists
        await eventually(lambda: len(inbox.items()) == 10)
        assert [m.index for _, m in inbox.items()] == list(range(15, 25))
        assert a.peer_stats(2).drops == 15
        await stop_all(a, b)

    run(body)


def test_protocol_version_mismatch_is_refused() -> None:
    async def body() -> None:
        with capture_logs() as logs:
            inbox = Inbox()
            b = await node(2, inbox)
            newer = TransportConfig(protocol_version=PROTOCOL_VERSION + 1)
            a = await node(1, Inbox(), {2: addr(b)}, newer)
            a.send(2, GROUP, [msg(0)])
            await eventually(lambda: b.stats.rejected_handshakes > 0)
            await eventually(lambda: a.stats.rejected_handshakes > 0)
            await stop_all(a, b)
        assert inbox.batches == []
        rejected = [e for e in logs if e["event"] == "handshake_rejected"]
        assert {e["side"] for e in rejected} == {"acceptor", "dialer"}
        assert all(e["log_level"] == "error" for e in rejected)
        acceptor = next(e for e in rejected if e["side"] == "acceptor")
        assert acceptor["peer_version"] == PROTOCOL_VERSION + 1
        assert acceptor["our_version"] == PROTOCOL_VERSION

    run(body)


def test_wrong_node_at_peer_address_is_refused() -> None:
    async def body() -> None:
        inbox = Inbox()
        b = await node(2, inbox)
        a = await node(1, Inbox(), {3: addr(b)})  # node 2 listens where 3 is expected
        a.send(3, GROUP, [msg(0, to=3)])
        await eventually(lambda: a.peer_stats(3).connect_failures > 0)
        assert a.peer_stats(3).connects == 0
        assert inbox.batches == []
        await stop_all(a, b)

    run(body)


async def raw_peer(
    t: Transport, hello: bytes | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A hand-rolled dialer, to send what a real Transport never would."""
    reader, writer = await asyncio.open_connection(*addr(t))
    if hello is None:
        hello = struct.pack(">4sHQ", b"SHRD", PROTOCOL_VERSION, 9)
    writer.write(struct.pack(">I", len(hello)) + hello)
    return reader, writer


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    data = await asyncio.wait_for(reader.read(), 5.0)  # read() returns at EOF only
    return isinstance(data, bytes)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (struct.pack(">I", 0xFFFFFFFF), "exceeds the limit"),
        (struct.pack(">I", 1) + b"\xc1", "not a msgpack document"),
        (struct.pack(">I", 5) + b"\x91\x93\x01\x02\x03", "array of 13 fields"),
    ],
)
def test_bad_frames_close_the_connection_not_the_node(frame: bytes, reason: str) -> None:
    async def body() -> None:
        with capture_logs() as logs:
            inbox = Inbox()
            b = await node(2, inbox)
            reader, writer = await raw_peer(b)
            writer.write(frame)
            assert await closed_by_peer(reader)
            writer.close()
            await writer.wait_closed()
            assert b.stats.bad_frames == 1
            # The node still serves real peers.
            a = await node(1, Inbox(), {2: addr(b)})
            a.send(2, GROUP, [msg(0)])
            await eventually(lambda: len(inbox.items()) == 1)
            await stop_all(a, b)
        [rejected] = [e for e in logs if e["event"] == "frame_rejected"]
        assert reason in rejected["reason"]

    run(body)


def test_garbage_handshake_is_refused() -> None:
    async def body() -> None:
        inbox = Inbox()
        b = await node(2, inbox)
        reader, writer = await raw_peer(b, hello=b"GET / HTTP/1.1\r\n\r\n")
        assert await closed_by_peer(reader)
        writer.close()
        await writer.wait_closed()
        assert inbox.batches == []
        await b.stop()

    run(body)


def test_oversized_batches_are_split_and_oversized_messages_dropped() -> None:
    async def body() -> None:
        inbox = Inbox()
        small = TransportConfig(max_frame=4096)
        b = await node(2, inbox, config=small)  # would reject (and lose) any larger frame
        a = await node(1, Inbox(), {2: addr(b)}, small)
        a.send(2, GROUP, [msg(i, size=256) for i in range(100)])
        a.send(2, GROUP, [msg(100, size=8192)])  # can never fit in a frame
        await eventually(lambda: len(inbox.items()) == 100)
        assert [m.index for _, m in inbox.items()] == list(range(100))
        assert b.peer_stats(1).frames_received >= 100 * 256 // 4096
        assert a.peer_stats(2).drops == 1
        assert b.stats.bad_frames == 0
        await stop_all(a, b)

    run(body)


def test_update_peers_adds_and_removes_at_runtime() -> None:
    async def body() -> None:
        inbox = Inbox()
        c = await node(3, inbox)
        a = await node(1, Inbox())
        a.send(3, GROUP, [msg(0, to=3)])
        assert a.peer_stats(3).drops == 1  # unknown peer
        a.update_peers({3: addr(c)})
        a.send(3, GROUP, [msg(1, to=3)])
        await eventually(lambda: len(inbox.items()) == 1)
        a.update_peers({})
        a.send(3, GROUP, [msg(2, to=3)])
        assert a.peer_stats(3).drops == 2
        await stop_all(a, c)

    run(body)


def test_on_batch_errors_do_not_break_the_connection() -> None:
    async def body() -> None:
        calls: list[int] = []

        def flaky(from_node: int, items: list[Item]) -> None:
            calls.append(len(items))
            if len(calls) == 1:
                raise RuntimeError("handler bug")

        b = Transport(2, LOCAL, 0, {}, flaky)
        _live.append(b)
        await b.start()
        a = await node(1, Inbox(), {2: addr(b)})
        a.send(2, GROUP, [msg(0)])
        await eventually(lambda: len(calls) == 1)
        a.send(2, GROUP, [msg(1)])
        await eventually(lambda: len(calls) == 2)
        assert a.peer_stats(2).connects == 1
        await stop_all(a, b)

    with capture_logs():  # the handler's traceback is expected; keep it out of the output
        run(body)


async def proxied_pair() -> tuple[Transport, Transport, FaultProxy, Inbox]:
    inbox = Inbox()
    b = await node(2, inbox)
    proxy = FaultProxy(0, addr(b))
    _live.append(proxy)
    await proxy.start()
    a = await node(1, Inbox(), {2: addr(proxy)})
    a.send(2, GROUP, [msg(0)])
    await eventually(lambda: len(inbox.items()) == 1, what="traffic through the proxy")
    assert proxy.connections == 1
    return a, b, proxy, inbox


def test_fault_proxy_drop_cuts_and_restores_traffic() -> None:
    async def body() -> None:
        a, b, proxy, inbox = await proxied_pair()
        proxy.block("drop")
        await eventually(lambda: a.peer_stats(2).connect_failures > 0, what="a refused redial")
        for i in range(20):
            a.send(2, GROUP, [msg(1000 + i)])
            await asyncio.sleep(0.01)
        assert len(inbox.items()) == 1
        proxy.unblock()
        await repeat_until(lambda: a.send(2, GROUP, [msg(1)]), lambda: len(inbox.items()) > 1)
        assert a.peer_stats(2).reconnects >= 1
        await stop_all(a, proxy, b)

    run(body)


def test_fault_proxy_hold_delays_then_delivers_in_order() -> None:
    async def body() -> None:
        a, b, proxy, inbox = await proxied_pair()
        proxy.block("hold")
        for i in range(1, 51):
            a.send(2, GROUP, [msg(i)])
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.1)
        assert len(inbox.items()) == 1
        proxy.unblock()
        await eventually(lambda: len(inbox.items()) == 51)
        assert [m.index for _, m in inbox.items()] == list(range(51))
        assert a.peer_stats(2).connects == 1  # the connection survived the short partition
        await stop_all(a, proxy, b)

    run(body)


def test_stop_is_idempotent_and_quiet() -> None:
    async def body() -> None:
        a = await node(1, Inbox(), {2: (LOCAL, free_port())})
        await a.stop()
        await a.stop()

    run(body)


def test_a_bad_message_is_dropped_alone_and_the_connection_stays() -> None:
    """Issue 15: each inbound message is checked (shardset_proto.peer_checks) before it
    is delivered; a bad one is dropped, counted and logged, its neighbours are not."""

    async def body() -> None:
        with capture_logs() as logs:
            inbox = Inbox()
            b = await node(2, inbox)
            _, writer = await raw_peer(b, struct.pack(">4sHQ", b"SHRD", PROTOCOL_VERSION, 1))
            huge = Message(MessageType.HEARTBEAT, to=2, frm=1, term=(1 << 64) - 1)
            batch = [(GROUP, msg(0)), (GROUP + 1, huge), (GROUP + 2, msg(1))]
            writer.write(frame(encode_batch(batch)))
            writer.write(frame(encode_batch([(GROUP, msg(2))])))  # the connection still reads
            await eventually(holds(inbox, 3))
            assert [(g, m.index) for g, m in inbox.items()] == [
                (GROUP, 0),
                (GROUP + 2, 1),
                (GROUP, 2),
            ]
            assert b.stats.rejected_messages == b.peer_stats(1).rejected == 1
            assert b.stats.bad_frames == 0
            writer.close()
            await writer.wait_closed()
            await stop_all(b)
        [rejected] = [e for e in logs if e["event"] == "peer_message_rejected"]
        assert rejected["field"] == "term" and rejected["group"] == GROUP + 1

    run(body)


def test_a_message_the_codec_refuses_drops_only_itself() -> None:
    """Issue 15: one encode failure dropped the whole outgoing batch, other groups'
    messages included."""

    async def body() -> None:
        inbox = Inbox()
        b = await node(2, inbox)
        a = await node(1, Inbox(), {2: addr(b)})
        a.send(2, GROUP, [msg(0)])
        await eventually(holds(inbox, 1))  # connected: the next three leave as one batch
        a.send(2, GROUP, [msg(1)])
        a.send(2, GROUP + 1, [Message(MessageType.HEARTBEAT, to=2, frm=1, term=1 << 64)])
        a.send(2, GROUP + 2, [msg(2)])
        await eventually(holds(inbox, 3))
        assert [m.index for _, m in inbox.items()] == [0, 1, 2]
        assert a.peer_stats(2).drops == 1
        await stop_all(a, b)

    run(body)


def test_a_term_far_ahead_of_the_group_s_own_is_refused() -> None:
    """Bounded terms are not enough: a forged term at the bound leaves a group whose next
    election's term every peer refuses. The transport asks the group's term (term_of)."""

    async def body() -> None:
        inbox = Inbox()
        b = Transport(2, LOCAL, 0, {}, inbox, term_of=lambda g: 7 if g == GROUP else None)
        _live.append(b)
        await b.start()
        _, writer = await raw_peer(b, struct.pack(">4sHQ", b"SHRD", PROTOCOL_VERSION, 1))
        far = 7 + (1 << 32) + 1
        batch = [
            (GROUP, Message(MessageType.HEARTBEAT, to=2, frm=1, term=far)),
            (GROUP + 1, Message(MessageType.HEARTBEAT, to=2, frm=1, term=far)),  # not hosted
            (GROUP, Message(MessageType.HEARTBEAT, to=2, frm=1, term=8)),
        ]
        writer.write(frame(encode_batch(batch)))
        await eventually(holds(inbox, 2))
        assert [(g, m.term) for g, m in inbox.items()] == [(GROUP + 1, far), (GROUP, 8)]
        assert b.stats.rejected_messages == 1
        writer.close()
        await writer.wait_closed()
        await stop_all(b)

    run(body)
