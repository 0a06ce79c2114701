"""Mutual TLS on the peer transport (issue 16): nodes of the store talk; everyone else
(another store's certificate, a self-signed or unknown CA's, an expired one, none, a
user's or the operator's, one whose hello claims another node) is refused before any
frame is read, counted per reason and logged once with the reason, the remote address
and the identity claimed. Real loopback sockets; waits poll conditions, never time.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from shardset_node.peers.transport import PROTOCOL_VERSION, Transport
from shardset_node.tls import NodeTls
from shardset_proto import pki
from shardset_proto.commands import Put, encode_command
from shardset_proto.framing import CLIENT_MAGIC, PEER_MAGIC, frame, hello
from shardset_proto.identity import Identity
from shardset_proto.peer import encode_batch
from shardset_proto.tlsfiles import TlsFiles
from shardset_raft.types import Entry, Message, MessageType

pytestmark = pytest.mark.filterwarnings("error")

STORE = "ns.store"
NOW = dt.datetime.now(dt.UTC)
LOCAL = "127.0.0.1"
GROUP = 1
Item = tuple[int, Message]


class Inbox:
    def __init__(self) -> None:
        self.batches: list[tuple[int, list[Item]]] = []

    def __call__(self, from_node: int, items: list[Item]) -> None:
        self.batches.append((from_node, items))

    def items(self, from_node: int | None = None) -> list[Item]:
        return [i for f, b in self.batches if from_node in (None, f) for i in b]


async def eventually(cond: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.005)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what or cond}") from None


def msg(i: int, to: int = 2, frm: int = 1) -> Message:
    """A well-formed APPEND of one Put (what the acceptor's checks pass)."""
    entry = Entry(term=1, index=i + 1, data=encode_command(Put(b"k", b"v")))
    return Message(MessageType.APPEND, to=to, frm=frm, term=1, index=i, entries=(entry,))


@pytest.fixture(scope="module")
def ca() -> pki.KeyPair:
    return pki.issue_ca(STORE, NOW)


def tls_dir(path: Path, ca: pki.KeyPair, pair: pki.KeyPair | None) -> TlsFiles:
    files = TlsFiles(path)
    files.write(
        ca.cert_pem, None if pair is None else pair.cert_pem, None if pair is None else pair.key_pem
    )
    return files


def node_tls(tmp: Path, ca: pki.KeyPair, node_id: int) -> NodeTls:
    pair = pki.issue_leaf(ca, Identity.node(STORE, node_id), NOW)
    return NodeTls(tls_dir(tmp / f"node{node_id}", ca, pair).directory, STORE, node_id)


def run(body: Callable[[], Coroutine[Any, Any, None]], loop: str = "asyncio") -> None:
    async def guarded() -> None:
        await asyncio.wait_for(body(), 60)

    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        uvloop.run(guarded())
    else:
        asyncio.run(guarded())


async def started(t: Transport) -> Transport:
    await t.start()
    return t


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_nodes_of_the_store_talk_over_mutual_tls(
    tmp_path: Path, ca: pki.KeyPair, loop: str
) -> None:
    async def body() -> None:
        inbox = Inbox()
        b = await started(Transport(2, LOCAL, 0, {}, inbox, tls=node_tls(tmp_path, ca, 2)))
        a = await started(
            Transport(1, LOCAL, 0, {2: (LOCAL, b.port)}, Inbox(), tls=node_tls(tmp_path, ca, 1))
        )
        try:
            a.send(2, GROUP, [msg(i) for i in range(20)])
            await eventually(lambda: len(inbox.items()) == 20, what="20 messages")
            assert [m.index for _, m in inbox.items(from_node=1)] == list(range(20))
            assert b.stats.refused == {} and a.stats.refused == {}
        finally:
            await a.stop()
            await b.stop()

    run(body, loop)


# --- intruders ------------------------------------------------------------------------
def intruder_context(pair: pki.KeyPair | None, tmp: Path) -> ssl.SSLContext:
    """A dialer that trusts anything (it is the acceptor's refusal under test) and
    presents `pair` (or no certificate)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if pair is not None:
        (tmp / "c.crt").write_bytes(pair.cert_pem)
        (tmp / "c.key").write_bytes(pair.key_pem)
        ctx.load_cert_chain(tmp / "c.crt", tmp / "c.key")
    return ctx


async def forge_append(port: int, ctx: ssl.SSLContext | None, claimed: int) -> None:
    """Connect, say hello as node `claimed`, send one well-formed APPEND, read to EOF."""
    try:
        reader, writer = await asyncio.open_connection(LOCAL, port, ssl=ctx)
    except (ssl.SSLError, OSError):
        return
    try:
        forged = msg(7, to=2, frm=claimed)
        writer.write(hello(PEER_MAGIC, PROTOCOL_VERSION, claimed))
        writer.write(frame(encode_batch([(GROUP, forged)])))
        await writer.drain()
        await reader.read()
    except (ssl.SSLError, OSError):
        pass  # the acceptor's alert or reset: refused
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, OSError):
            await writer.wait_closed()


def _intruders(ca: pki.KeyPair) -> dict[str, tuple[pki.KeyPair | None, int]]:
    """reason -> (the certificate presented, the node id the hello claims)."""
    other_ca = pki.issue_ca(STORE, NOW)
    self_signed = pki.issue_ca(STORE, NOW)  # a certificate signed by its own key
    return {
        "other_store": (pki.issue_leaf(ca, Identity.node("other.store", 3), NOW), 3),
        "unknown_ca": (pki.issue_leaf(other_ca, Identity.node(STORE, 3), NOW), 3),
        "self_signed": (self_signed, 3),
        "expired": (
            pki.issue_leaf(ca, Identity.node(STORE, 3), NOW - dt.timedelta(days=10), days=1),
            3,
        ),
        "id_mismatch": (pki.issue_leaf(ca, Identity.node(STORE, 3), NOW), 1),
        "no_certificate": (None, 1),
        "not_a_node": (pki.issue_leaf(ca, Identity.user(STORE, "alice"), NOW), 1),
    }


@pytest.mark.parametrize(
    "reason",
    [
        "other_store",
        "unknown_ca",
        "self_signed",
        "expired",
        "id_mismatch",
        "no_certificate",
        "not_a_node",
        "operator",
        "not_tls",
    ],
)
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_an_intruder_is_refused_before_any_frame_is_read(
    tmp_path: Path, ca: pki.KeyPair, reason: str, loop: str
) -> None:
    intruders = _intruders(ca)
    if reason == "operator":
        pair: pki.KeyPair | None = pki.issue_leaf(ca, Identity.operator(STORE), NOW)
        claimed, expected = 1, "not_a_node"
    elif reason == "not_tls":
        pair, claimed, expected = None, 1, "not_tls"
    else:
        (pair, claimed), expected = intruders[reason], reason

    async def body() -> None:
        inbox = Inbox()
        b = await started(Transport(2, LOCAL, 0, {}, inbox, tls=node_tls(tmp_path, ca, 2)))
        try:
            with capture_logs() as logs:
                ctx = None if reason == "not_tls" else intruder_context(pair, tmp_path)
                await forge_append(b.port, ctx, claimed)
                await eventually(lambda: sum(b.stats.refused.values()) > 0, what="a refusal")
            assert inbox.items() == []  # nothing it sent was delivered
            assert b.stats.refused == {expected: 1}
            assert b.peer_stats(claimed).frames_received == 0
            refusals = [e for e in logs if e["event"] == "peer_refused"]
            assert len(refusals) == 1, logs
            line = refusals[0]
            assert line["reason"] == expected
            assert line["remote"].startswith(f"{LOCAL}:")
            assert line["side"] == "acceptor"
            if expected == "id_mismatch":
                assert line["claimed"] == "node 1" and "node 3" in line["error"]
            if expected in ("other_store", "not_a_node"):
                assert line["claimed"].startswith("shardset://")
        finally:
            await b.stop()

    run(body, loop)


def test_the_peer_port_serves_no_wire_protocol_with_tls(tmp_path: Path, ca: pki.KeyPair) -> None:
    served: list[int] = []

    async def on_client(r: asyncio.StreamReader, w: asyncio.StreamWriter, version: int) -> None:
        served.append(version)

    async def body() -> None:
        tls = node_tls(tmp_path, ca, 2)
        b = await started(Transport(2, LOCAL, 0, {}, Inbox(), on_client=on_client, tls=tls))
        user = pki.issue_leaf(ca, Identity.user(STORE, "alice"), NOW)
        try:
            # Even with a valid certificate of the store, a client is not served here.
            reader, writer = await asyncio.open_connection(
                LOCAL, b.port, ssl=intruder_context(user, tmp_path)
            )
            writer.write(hello(CLIENT_MAGIC, 1, 0))
            with contextlib.suppress(ssl.SSLError, OSError):
                await reader.read()
            writer.close()
            await eventually(lambda: b.stats.refused.get("not_a_node") == 1)
            assert served == []
        finally:
            await b.stop()

    run(body)


def test_the_dialer_refuses_an_acceptor_that_is_not_the_node_it_dialled(
    tmp_path: Path, ca: pki.KeyPair
) -> None:
    """A stale map or a reused address: node 3 answers where node 2 was. The dialer
    sends nothing (not even its hello) and counts the refusal."""

    async def body() -> None:
        inbox = Inbox()
        c = await started(Transport(3, LOCAL, 0, {}, inbox, tls=node_tls(tmp_path, ca, 3)))
        a = await started(
            Transport(1, LOCAL, 0, {2: (LOCAL, c.port)}, Inbox(), tls=node_tls(tmp_path, ca, 1))
        )
        try:
            with capture_logs() as logs:
                a.send(2, GROUP, [msg(0)])
                await eventually(lambda: a.stats.refused.get("id_mismatch", 0) >= 1)
            line = next(e for e in logs if e["event"] == "peer_refused")
            assert line["side"] == "dialer" and "node 3" in line["error"]
            assert inbox.items() == []
            assert a.peer_stats(2).connects == 0
        finally:
            await a.stop()
            await c.stop()

    run(body)


def test_a_refused_dialer_leaves_the_acceptor_serving_real_peers(
    tmp_path: Path, ca: pki.KeyPair
) -> None:
    async def body() -> None:
        inbox = Inbox()
        b = await started(Transport(2, LOCAL, 0, {}, inbox, tls=node_tls(tmp_path, ca, 2)))
        a = await started(
            Transport(1, LOCAL, 0, {2: (LOCAL, b.port)}, Inbox(), tls=node_tls(tmp_path, ca, 1))
        )
        try:
            pair, claimed = _intruders(ca)["unknown_ca"]
            await forge_append(b.port, intruder_context(pair, tmp_path), claimed)
            a.send(2, GROUP, [msg(0)])
            await eventually(lambda: len(inbox.items()) == 1, what="the real peer's message")
            assert inbox.items()[0][1].frm == 1
        finally:
            await a.stop()
            await b.stop()

    run(body)


def test_without_tls_a_forged_append_is_delivered(ca: pki.KeyPair) -> None:
    """The documented insecure mode (issue 16): anyone who reaches the peer port is taken
    for the node its hello names. This is what --tls-dir closes."""

    async def body() -> None:
        inbox = Inbox()
        b = await started(Transport(2, LOCAL, 0, {}, inbox))
        try:
            await forge_append_plain(b.port, claimed=1)
            await eventually(lambda: len(inbox.items()) == 1, what="the forged APPEND")
            assert inbox.items(from_node=1)[0][1].index == 7
        finally:
            await b.stop()

    run(body)


async def forge_append_plain(port: int, claimed: int) -> None:
    reader, writer = await asyncio.open_connection(LOCAL, port)
    writer.write(hello(PEER_MAGIC, PROTOCOL_VERSION, claimed))
    writer.write(frame(encode_batch([(GROUP, msg(7, to=2, frm=claimed))])))
    await writer.drain()
    await reader.readexactly(8)  # the acceptor's hello: it took us for node `claimed`
    await asyncio.sleep(0)
    writer.close()
    await writer.wait_closed()


def test_a_dialer_whose_certificate_is_refused_says_so(tmp_path: Path, ca: pki.KeyPair) -> None:
    """A node left with a certificate of a CA its peers no longer trust (a CA rotation
    gone wrong): the acceptor refuses it (unknown_ca) and the dialer counts and logs that
    its certificate was refused, rather than failing quietly."""
    newer = pki.issue_ca(STORE, NOW)
    pair = pki.issue_leaf(newer, Identity.node(STORE, 1), NOW)
    files = TlsFiles(tmp_path / "dialer")
    files.write(ca.cert_pem + newer.cert_pem, pair.cert_pem, pair.key_pem)

    async def body() -> None:
        inbox = Inbox()
        b = await started(Transport(2, LOCAL, 0, {}, inbox, tls=node_tls(tmp_path, ca, 2)))
        dialer_tls = NodeTls(files.directory, STORE, 1)
        a = await started(Transport(1, LOCAL, 0, {2: (LOCAL, b.port)}, Inbox(), tls=dialer_tls))
        try:
            with capture_logs() as logs:
                a.send(2, GROUP, [msg(0)])
                await eventually(lambda: a.stats.refused.get("refused_by_peer", 0) >= 1)
            assert b.stats.refused.get("unknown_ca", 0) >= 1
            assert inbox.items() == []
            line = next(e for e in logs if e.get("reason") == "refused_by_peer")
            assert line["side"] == "dialer" and "node 2 closed" in line["error"]
        finally:
            await a.stop()
            await b.stop()

    run(body)
