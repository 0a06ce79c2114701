"""Peer transport: batched, pipelined Raft messages over one TCP connection per peer.

Frames and hellos as in :mod:`shardset_proto.framing` (magic PEER_MAGIC, payloads of
at most max_frame bytes). The dialer sends its hello first; the acceptor answers with
its own (also when it rejects the version, so the dialer can log why) and from then on
only reads. Every later frame, dialer to acceptor, is one :mod:`shardset_proto.peer`
batch. Every message of an inbound batch is checked (shardset_proto.peer_checks) before
it is handed on: one that fails is dropped, counted and logged (rate-limited), and the
rest of the batch, other groups' messages included, is delivered. A SNAPSHOT's bytes
are checked too (`check_snapshot`, the node's state machines' own verification; in a
worker thread when big), so a damaged or forged snapshot is never stored: it is dropped,
counted as a rejected message and logged as ``peer_snapshot_rejected``.

With a NodeTls (issue 16) every connection is TLS 1.3 with client certificates, both
ways verified before anything else: the dialer checks the acceptor's certificate names
`node/<the id it dialled>` of this store, the acceptor that the dialer's names a node of
this store whose id is the one its hello then claims. Both also check that a CA of the
CURRENT bundle issued it (NodeTls.verify). A refused connection (no certificate, another
store's, an unknown CA, expired, a user's or the operator's, an id mismatch) is closed
before any frame is read, counted per reason (TransportStats.refused) and logged as
``peer_refused`` with the reason, the remote address and the identity claimed. In TLS
mode the peer port carries Raft only: the wire protocol has a port of its own. Without
a NodeTls (insecure mode) connections are plain TCP and anyone who reaches the port is
taken for the node its hello names (issue 16's forged APPEND).

Each connection carries traffic one way: A's messages to B ride A's connection to B,
B's replies ride B's connection to A. So nobody waits for a reply on a connection
(pipelining), and there is no tie-breaking between two nodes dialing each other.

A writer task per peer drains that peer's queue into one frame per wake-up (batching):
everything queued during one event-loop iteration leaves as a single frame, unless it
would exceed the frame limit, in which case it leaves as several. The queue
is bounded and drops its oldest messages when full; Raft retransmits what it needs, and
a message that sat in a queue too long is stale anyway. Call every method from the
event-loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from shardset_node.tls import NodeTls, PeerRefused
from shardset_proto.framing import (
    CLIENT_MAGIC,
    HEADER_SIZE,
    MAX_PEER_FRAME,
    PEER_MAGIC,
    FrameError,
    FrameReader,
    frame,
    hello,
    read_hello,
)
from shardset_proto.peer import (
    ARRAY_HEADER,
    CodecError,
    decode_batch,
    encode_batch,
    max_encoded_size,
)
from shardset_proto.peer_checks import PeerMessageError, check_message, check_term_jump
from shardset_raft.types import Message

__all__ = [
    "PROTOCOL_VERSION",
    "Backoff",
    "BatchHandler",
    "ClientHandler",
    "PeerStats",
    "SnapshotCheck",
    "TermOf",
    "Transport",
    "TransportConfig",
    "TransportStats",
]

PROTOCOL_VERSION = 1

Item = tuple[int, Message]
BatchHandler = Callable[[int, list[Item]], None]
# A hosted group's current term (None: not hosted here), for check_term_jump.
TermOf = Callable[[int], int | None]
# Raises (naming what is wrong) unless a received snapshot's data is one the group's state
# machine will restore: (group, data).
SnapshotCheck = Callable[[int, bytes], None]
# Snapshots up to this size are checked on the event loop (well under a millisecond);
# bigger ones in a worker thread, so a big one does not hold every other group's traffic.
INLINE_SNAPSHOT_CHECK_BYTES = 64 * 1024
# Serves one client connection once its hello is read (the handler answers it):
# (reader, writer, the client's protocol version).
ClientHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
Address = tuple[str, int]

_LOGGER = "shardset_node.peers.transport"
# A peer sending bad frames or messages gets one log line per this many seconds (with
# the count of those not logged): a flood must not flood the log. All are counted in stats.
REJECT_LOG_INTERVAL = 10.0


@dataclass(frozen=True, slots=True)
class TransportConfig:
    queue_limit: int = 10_000  # messages per peer before the oldest are dropped
    max_frame: int = MAX_PEER_FRAME
    backoff_base: float = 0.05
    backoff_cap: float = 2.0
    connect_timeout: float = 1.0  # bounds the TCP connect and, separately, the handshake
    protocol_version: int = PROTOCOL_VERSION  # settable so tests (and upgrades) can differ


@dataclass(slots=True)
class PeerStats:
    frames_sent: int = 0
    messages_sent: int = 0  # handed to the socket; delivery is not acknowledged
    bytes_sent: int = 0
    frames_received: int = 0
    messages_received: int = 0
    bytes_received: int = 0
    drops: int = 0  # queue overflow, unreachable peer, unknown peer, oversized message
    rejected: int = 0  # inbound messages that failed shardset_proto.peer_checks
    connects: int = 0
    reconnects: int = 0  # connects after the first
    connect_failures: int = 0


@dataclass(slots=True)
class TransportStats:
    peers: dict[int, PeerStats] = field(default_factory=dict)
    bad_frames: int = 0  # oversized, truncated or undecodable inbound frames
    rejected_handshakes: int = 0
    rejected_messages: int = 0  # inbound messages that failed shardset_proto.peer_checks
    rejected_snapshots: int = 0  # of those, SNAPSHOTs whose data failed check_snapshot
    # TLS connections refused (either side), per reason: no_certificate, unknown_ca,
    # self_signed, expired, other_store, not_a_node, id_mismatch, untrusted_ca, not_tls,
    # tls_error, refused_by_peer (the acceptor refused this node's certificate);
    # handshake_incomplete (closed or timed out mid-handshake) is counted only.
    refused: dict[str, int] = field(default_factory=dict)

    def peer(self, node_id: int) -> PeerStats:
        stats = self.peers.get(node_id)
        if stats is None:
            stats = self.peers[node_id] = PeerStats()
        return stats


class Backoff:
    """Capped exponential back-off with equal jitter, so restarted peers don't dial in step."""

    def __init__(self, base: float, cap: float, rng: random.Random | None = None) -> None:
        self._base = base
        self._cap = cap
        self._rng = rng or random.Random()
        self._attempt = 0

    def next(self) -> float:
        ceiling = min(self._cap, self._base * 2.0**self._attempt)
        if ceiling < self._cap:
            self._attempt += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self._attempt = 0


class _HandshakeError(Exception):
    pass


class _Peer:
    __slots__ = ("addr", "node_id", "queue", "task", "wake")

    def __init__(self, node_id: int, addr: Address, limit: int) -> None:
        self.node_id = node_id
        self.addr = addr
        # maxlen makes the deque drop from the left (oldest) on overflow.
        self.queue: deque[Item] = deque(maxlen=limit)
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


def _take_batch(queue: deque[Item], budget: int) -> list[Item]:
    """Pop the oldest items whose encoding surely fits in `budget` bytes (at least one item).

    Bounding before encoding keeps a deep queue of large appends from being encoded (and
    held in memory) all at once; the rest stays queued for the next frame.
    """
    items: list[Item] = []
    size = 0
    while queue:
        size += max_encoded_size(queue[0][1])
        if items and size > budget:
            break
        items.append(queue.popleft())
    return items


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):  # a reset peer makes wait_closed re-raise its error
        await writer.wait_closed()


class Transport:
    def __init__(
        self,
        node_id: int,
        host: str,
        port: int,
        peers: Mapping[int, Address],
        on_batch: BatchHandler,
        *,
        config: TransportConfig | None = None,
        on_client: ClientHandler | None = None,
        term_of: TermOf | None = None,
        check_snapshot: SnapshotCheck | None = None,
        tls: NodeTls | None = None,
    ) -> None:
        self.node_id = node_id
        self._tls = tls
        self._server_ctx: ssl.SSLContext | None = None
        self._term_of = term_of
        self._check_snapshot = check_snapshot
        # With TLS the wire protocol has its own listener: the peer port serves peers only.
        self._on_client = on_client if tls is None else None
        self.host = host
        self.stats = TransportStats()
        self._port = port
        self._on_batch = on_batch
        self._config = config or TransportConfig()
        # A lazy proxy (not _log.bind()), so a structlog configuration made after this
        # constructor still applies.
        self._log = structlog.get_logger(_LOGGER, node=node_id)
        self._peers: dict[int, _Peer] = {}
        self._server: asyncio.Server | None = None
        self._acceptor: asyncio.Task[None] | None = None  # TLS: the accept loop
        self._started = False
        self._closing = False
        # Tasks to cancel on stop(): inbound connection handlers, and writers of removed peers
        # that may still be closing their connection.
        self._background: set[asyncio.Task[None]] = set()
        # Per peer (or per refusal reason and remote host): when a rejection was last
        # logged, and how many since were not.
        self._reject_log: dict[object, tuple[float | None, int]] = {}
        self.update_peers(peers)

    @property
    def port(self) -> int:
        """The listening port; the real one after start() when constructed with port 0."""
        return self._port

    def peer_stats(self, node_id: int) -> PeerStats:
        return self.stats.peer(node_id)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self._closing = False
        if self._tls is not None:
            # One context for every handshake; it follows the node's certificate reloads.
            self._server_ctx = self._tls.server_context(require_client_cert=True)
            # Sockets accepted here and the TLS handshake run in each connection's task
            # (connect_accepted_socket), so a refused one is seen, logged and counted
            # here rather than dropped inside the event loop (asyncio and uvloop alike).
            listener = _listen(self.host, self._port)
            self._port = listener.getsockname()[1]
            self._acceptor = asyncio.create_task(self._accept_loop(listener), name="peer-accept")
        else:
            self._server = await asyncio.start_server(self._accept, self.host, self._port)
            self._port = self._server.sockets[0].getsockname()[1]
        self._started = True
        for peer in self._peers.values():
            self._spawn_writer(peer)
        self._log.info(
            "transport_started", host=self.host, port=self._port, tls=self._tls is not None
        )

    async def stop(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        if self._acceptor is not None:
            self._acceptor.cancel()
            await asyncio.gather(self._acceptor, return_exceptions=True)
            self._acceptor = None
        tasks = [p.task for p in self._peers.values() if p.task is not None]
        tasks.extend(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        self._started = False
        self._log.info("transport_stopped")

    # -- sending ---------------------------------------------------------------------

    def send(self, to_node: int, group: int, messages: Sequence[Message]) -> None:
        """Queue messages for a peer and return at once; never blocks, may drop the oldest."""
        if not messages:
            return
        peer = self._peers.get(to_node)
        if peer is None:
            # Counted, not logged: Raft may keep addressing a removed node for a while.
            self.stats.peer(to_node).drops += len(messages)
            return
        queue = peer.queue
        overflow = len(queue) + len(messages) - self._config.queue_limit
        if overflow > 0:
            self.stats.peer(to_node).drops += overflow
        queue.extend((group, m) for m in messages)
        peer.wake.set()

    def update_peers(self, peers: Mapping[int, Address]) -> None:
        """Make the peer set exactly `peers` (entries for this node itself are ignored)."""
        wanted = {n: (a[0], a[1]) for n, a in peers.items() if n != self.node_id}
        for node_id, peer in list(self._peers.items()):
            if wanted.get(node_id) != peer.addr:
                self._remove_peer(node_id)
        for node_id, addr in wanted.items():
            if node_id not in self._peers:
                self._add_peer(node_id, addr)

    def _add_peer(self, node_id: int, addr: Address) -> None:
        peer = _Peer(node_id, addr, self._config.queue_limit)
        self._peers[node_id] = peer
        self.stats.peer(node_id)
        if self._started:
            self._spawn_writer(peer)
        self._log.info("peer_added", peer=node_id, addr=f"{addr[0]}:{addr[1]}")

    def _remove_peer(self, node_id: int) -> None:
        peer = self._peers.pop(node_id)
        self.stats.peer(node_id).drops += len(peer.queue)
        if peer.task is not None:
            peer.task.cancel()
            self._track(peer.task)  # so stop() still waits for its connection to close
        self._log.info("peer_removed", peer=node_id)

    def _spawn_writer(self, peer: _Peer) -> None:
        peer.task = asyncio.create_task(self._run_peer(peer), name=f"peer-writer-{peer.node_id}")

    def _track(self, task: asyncio.Task[None]) -> None:
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _run_peer(self, peer: _Peer) -> None:
        """Keep one connection to the peer alive and drain its queue into it, forever."""
        backoff = Backoff(self._config.backoff_base, self._config.backoff_cap)
        stats = self.stats.peer(peer.node_id)
        while True:
            try:
                conn = await self._dial(peer)
                if conn is None:
                    stats.connect_failures += 1
                    # What queued up while the peer was unreachable is stale by the time it
                    # is back, and the bounded queue must not fill with it.
                    stats.drops += len(peer.queue)
                    peer.queue.clear()
                else:
                    backoff.reset()
                    await self._pump(peer, stats, *conn)
            except Exception:  # a bug here must not silently end all traffic to this peer
                self._log.exception("peer_writer_failed", peer=peer.node_id)
            # Also after a lost connection: a peer that accepts and at once closes must not
            # make us spin.
            await asyncio.sleep(backoff.next())

    async def _dial(self, peer: _Peer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        timeout = self._config.connect_timeout
        conn = await self._connect(peer)
        if conn is None:
            return None
        reader, writer = conn
        try:
            await asyncio.wait_for(self._dialer_handshake(peer, reader, writer), timeout)
        except (OSError, TimeoutError, EOFError, FrameError, _HandshakeError) as exc:
            if self._tls is not None and isinstance(exc, ssl.SSLError | EOFError):
                self._refused_by_peer(peer, exc)
            else:
                self._log.debug("handshake_failed", peer=peer.node_id, error=repr(exc))
            await _close(writer)
            return None
        except asyncio.CancelledError:
            writer.close()  # stop() or peer removal mid-handshake: don't leak the socket
            raise
        stats = self.stats.peer(peer.node_id)
        stats.connects += 1
        if stats.connects > 1:
            stats.reconnects += 1
        self._log.info("peer_connected", peer=peer.node_id, connects=stats.connects)
        return reader, writer

    def _refused_by_peer(self, peer: _Peer, exc: ssl.SSLError | EOFError) -> None:
        """TLS 1.3: the acceptor's refusal of OUR certificate arrives after our side of
        the handshake, at our first read, as an alert or a close before its hello (the
        acceptor logs why; say here that it happened)."""
        why = handshake_reason(exc)[1] if isinstance(exc, ssl.SSLError) else repr(exc)
        mine = f"node {peer.node_id} closed the connection before its hello: {why}"
        addr = f"{peer.addr[0]}:{peer.addr[1]}"
        self._refuse("dialer", "refused_by_peer", mine, addr, claimed=f"node {self.node_id}")

    async def _connect(
        self, peer: _Peer
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A connection to the peer: TCP, or with TLS one whose certificate names the
        node dialled (checked before anything is sent on it)."""
        timeout = self._config.connect_timeout
        addr = f"{peer.addr[0]}:{peer.addr[1]}"
        try:
            if self._tls is None:
                opening = asyncio.open_connection(*peer.addr)
            else:  # a fresh context per dial: the newest certificates after a reload
                ctx = self._tls.client_context()
                opening = asyncio.open_connection(
                    *peer.addr, ssl=ctx, ssl_handshake_timeout=timeout
                )
            reader, writer = await asyncio.wait_for(opening, 2 * timeout)
        except ssl.SSLError as exc:
            reason, why = handshake_reason(exc)
            self._refuse("dialer", reason, why, addr, claimed=f"node {peer.node_id}")
            return None
        except (OSError, TimeoutError) as exc:
            # debug: a down peer is redialed every few seconds and would flood the log.
            self._log.debug("dial_failed", peer=peer.node_id, error=repr(exc))
            return None
        if self._tls is not None:
            try:
                answered = self._tls.verify_node(writer.get_extra_info("ssl_object"))
                if answered != peer.node_id:
                    raise PeerRefused(
                        "id_mismatch",
                        f"dialled node {peer.node_id}, its certificate names node {answered}",
                        f"node {answered}",
                    )
            except PeerRefused as exc:
                self._refuse("dialer", exc.reason, str(exc), addr, claimed=exc.claimed)
                await _close(writer)
                return None
        return reader, writer

    async def _dialer_handshake(
        self, peer: _Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        ours = self._config.protocol_version
        writer.write(hello(PEER_MAGIC, ours, self.node_id))
        await writer.drain()
        _, version, node_id = await read_hello(reader, (PEER_MAGIC,))
        if version != ours:
            self.stats.rejected_handshakes += 1
            self._log.error(
                "handshake_rejected",
                side="dialer",
                peer=peer.node_id,
                peer_version=version,
                our_version=ours,
                reason="protocol version mismatch",
            )
            raise _HandshakeError("protocol version mismatch")
        if node_id != peer.node_id:
            # Stale peer map or a reused address: talking to the wrong node corrupts Raft.
            self._log.error("peer_identity_mismatch", peer=peer.node_id, answered_as=node_id)
            raise _HandshakeError("peer identity mismatch")

    async def _pump(
        self,
        peer: _Peer,
        stats: PeerStats,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """Write queued messages until the connection fails; then return."""
        watcher = asyncio.create_task(self._watch_eof(peer, reader))
        try:
            while True:
                if not peer.queue:
                    peer.wake.clear()
                    await peer.wake.wait()
                if watcher.done():
                    raise ConnectionResetError("peer closed the connection")
                self._write_pending(peer, stats, writer)
                # Yields only above the write-buffer high-water mark; meanwhile sends pile
                # up in the queue and leave as the next (larger) frame.
                await writer.drain()
        except OSError as exc:
            self._log.warning("peer_disconnected", peer=peer.node_id, error=repr(exc))
        finally:
            watcher.cancel()
            await asyncio.wait([watcher])
            await _close(writer)

    @staticmethod
    async def _watch_eof(peer: _Peer, reader: asyncio.StreamReader) -> None:
        # The acceptor never writes after its hello, so any read returning ends the connection.
        # Without this, a dead idle connection is only noticed at the next write.
        with contextlib.suppress(OSError):
            await reader.read(1)
        peer.wake.set()

    def _write_pending(self, peer: _Peer, stats: PeerStats, writer: asyncio.StreamWriter) -> None:
        items = _take_batch(peer.queue, self._config.max_frame - ARRAY_HEADER)
        for data, count in self._frames(peer, stats, items):
            writer.write(data)
            stats.frames_sent += 1
            stats.messages_sent += count
            stats.bytes_sent += len(data)

    def _frames(
        self, peer: _Peer, stats: PeerStats, items: list[Item]
    ) -> Iterator[tuple[bytes, int]]:
        """Encode items as frames; halving is a safety net, _take_batch's bound is exact."""
        try:
            payload = encode_batch(items)
        except CodecError:
            # One message the codec refuses (a value beyond 64 bits: a bug upstream, or a
            # state poisoned before peer_checks existed) must not take the other groups'
            # messages in the batch with it: only it is dropped.
            items = self._encodable(peer, stats, items)
            if not items:
                return
            payload = encode_batch(items)
        if len(payload) <= self._config.max_frame:
            yield frame(payload), len(items)
        elif len(items) == 1:
            stats.drops += 1
            self._log.error("message_too_large", peer=peer.node_id, size=len(payload))
        else:
            half = len(items) // 2
            yield from self._frames(peer, stats, items[:half])
            yield from self._frames(peer, stats, items[half:])

    def _encodable(self, peer: _Peer, stats: PeerStats, items: list[Item]) -> list[Item]:
        good: list[Item] = []
        for group, m in items:
            try:
                encode_batch([(group, m)])
            except CodecError as exc:
                stats.drops += 1
                self._log.error(
                    "encode_failed",
                    peer=peer.node_id,
                    group=group,
                    type=m.type.name,
                    term=m.term,
                    error=str(exc),
                )
            else:
                good.append((group, m))
        return good

    # -- receiving -------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._track(task)
        # The top of the connection task, cancelled by stop(). On 3.11 a connection task
        # that ends cancelled makes asyncio.streams log a spurious callback error.
        with contextlib.suppress(asyncio.CancelledError):
            await self._serve(reader, writer)

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    sock, _ = await loop.sock_accept(listener)
                except OSError as exc:  # out of file descriptors, say: keep listening
                    self._log.warning("peer_accept_failed", error=repr(exc))
                    await asyncio.sleep(0.1)
                    continue
                self._track(asyncio.create_task(self._accept_tls(sock)))
        finally:
            listener.close()

    async def _accept_tls(self, sock: socket.socket) -> None:
        # The top of the connection task, cancelled by stop().
        with contextlib.suppress(asyncio.CancelledError):
            conn = await self._tls_accept(sock)
            if conn is not None:
                await self._serve(*conn)

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        cert_node: int | None = None,
    ) -> None:
        """One inbound connection: its hello, then its frames (cert_node: the node id
        its verified certificate names, with TLS)."""
        remote = _remote(writer)
        try:
            if self._closing:
                return
            # A client of the binary key-value protocol (shardset_proto.wire) says
            # CLIENT_MAGIC instead: the peer port serves both, so a node has no third port.
            magics = (PEER_MAGIC, CLIENT_MAGIC) if self._on_client is not None else (PEER_MAGIC,)
            magic, version, node_id = await asyncio.wait_for(
                read_hello(reader, magics), self._config.connect_timeout
            )
            if magic == CLIENT_MAGIC and self._on_client is not None:
                await self._on_client(reader, writer, version)
                return
            if cert_node is not None and node_id != cert_node:
                why = f"hello claims node {node_id}, the certificate names node {cert_node}"
                self._refuse("acceptor", "id_mismatch", why, remote, claimed=f"node {node_id}")
                return
            from_node = await asyncio.wait_for(
                self._acceptor_handshake(writer, version, node_id), self._config.connect_timeout
            )
            if from_node is not None:
                await self._read_frames(from_node, reader)
        except (OSError, EOFError, TimeoutError, FrameError) as exc:
            self._log.warning("inbound_closed", remote=remote, error=repr(exc))
        finally:
            await _close(writer)

    async def _tls_accept(
        self, sock: socket.socket
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int] | None:
        """The connection as streams and the node id the dialer's certificate names,
        once the TLS handshake and the certificate's checks passed; None (refused:
        counted, logged; the connection closed) otherwise."""
        assert self._tls is not None and self._server_ctx is not None
        loop = asyncio.get_running_loop()
        remote = _remote(sock.getpeername())
        reader = asyncio.StreamReader(loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            # On failure the loop closes the socket it was handed. (The protocol it
            # returns is uvloop's SSLProtocol, not ours: ours is used.)
            secure, _ = await loop.connect_accepted_socket(
                lambda: protocol,
                sock,
                ssl=self._server_ctx,
                ssl_handshake_timeout=self._config.connect_timeout,
            )
            writer = asyncio.StreamWriter(secure, protocol, reader, loop)
        except ssl.SSLError as exc:
            reason, why = handshake_reason(exc)
            self._refuse("acceptor", reason, why, remote, claimed=None)
            return None
        except (OSError, EOFError, TimeoutError) as exc:
            # A port probe or a peer gone mid-handshake: nothing was refused.
            self._count_refusal("handshake_incomplete")
            self._log.debug("peer_handshake_incomplete", remote=remote, error=repr(exc))
            return None
        try:
            return reader, writer, self._tls.verify_node(writer.get_extra_info("ssl_object"))
        except PeerRefused as exc:
            await _close(writer)
            self._refuse("acceptor", exc.reason, str(exc), remote, claimed=exc.claimed)
            return None

    def _count_refusal(self, reason: str) -> None:
        self.stats.refused[reason] = self.stats.refused.get(reason, 0) + 1

    def _refuse(
        self, side: str, reason: str, why: str, remote: str, *, claimed: str | None
    ) -> None:
        """Count a refused TLS connection and log it (one line per reason and remote
        host per REJECT_LOG_INTERVAL, with how many were not logged since)."""
        self._count_refusal(reason)
        unlogged = self._may_log_rejection((reason, remote.rpartition(":")[0]))
        if unlogged is None:
            return
        self._log.warning(
            "peer_refused",
            side=side,
            reason=reason,
            error=why,
            remote=remote,
            claimed=claimed,
            not_logged_since_last=unlogged,
        )

    async def _acceptor_handshake(
        self, writer: asyncio.StreamWriter, version: int, node_id: int
    ) -> int | None:
        ours = self._config.protocol_version
        # Answer even when refusing, so the dialer can log the versions on its side too.
        writer.write(hello(PEER_MAGIC, ours, self.node_id))
        await writer.drain()
        if version == ours:
            return node_id
        self.stats.rejected_handshakes += 1
        self._log.error(
            "handshake_rejected",
            side="acceptor",
            peer=node_id,
            peer_version=version,
            our_version=ours,
            reason="protocol version mismatch",
        )
        return None

    async def _read_frames(self, from_node: int, reader: asyncio.StreamReader) -> None:
        stats = self.stats.peer(from_node)
        frames = FrameReader(reader, limit=self._config.max_frame)
        while True:
            try:
                payloads = await frames.read()
            except FrameError as exc:
                self._reject_frame(from_node, str(exc))
                return
            if payloads is None:
                if 0 < frames.buffered < HEADER_SIZE:
                    self._reject_frame(from_node, "truncated frame header")
                elif frames.buffered:
                    raise EOFError("the peer closed the connection inside a frame")
                return  # a clean close between frames
            for payload in payloads:
                try:
                    items = decode_batch(payload)
                except CodecError as exc:
                    self._reject_frame(from_node, str(exc))
                    return
                stats.frames_received += 1
                stats.messages_received += len(items)
                stats.bytes_received += HEADER_SIZE + len(payload)
                items = self._screen(from_node, stats, items)
                items = await self._screen_snapshots(from_node, stats, items)
                if items:
                    self._deliver(from_node, items)

    def _screen(self, from_node: int, stats: PeerStats, items: list[Item]) -> list[Item]:
        """The messages that pass shardset_proto.peer_checks; the others are dropped
        one by one (the frame stays in sync, so the connection and the rest stay)."""
        good: list[Item] = []
        for group, m in items:
            try:
                check_message(group, m, sender=from_node, receiver=self.node_id)
                term = None if self._term_of is None else self._term_of(group)
                if term is not None:
                    check_term_jump(m, term)
            except PeerMessageError as exc:
                self._reject_message(from_node, stats, group, m, exc)
            else:
                good.append((group, m))
        return good

    async def _screen_snapshots(
        self, from_node: int, stats: PeerStats, items: list[Item]
    ) -> list[Item]:
        """The messages, less the SNAPSHOTs whose data fails check_snapshot (in order:
        awaiting a check holds this connection's later frames, not other connections)."""
        check = self._check_snapshot
        if check is None or all(m.snapshot is None for _, m in items):
            return items
        good: list[Item] = []
        for group, m in items:
            data = b"" if m.snapshot is None else m.snapshot.data
            try:
                if len(data) > INLINE_SNAPSHOT_CHECK_BYTES:
                    await asyncio.to_thread(check, group, data)
                elif data:
                    check(group, data)
            except Exception as exc:  # any failure: the data is not what restore takes
                self._reject_snapshot(from_node, stats, group, m, exc)
            else:
                good.append((group, m))
        return good

    def _reject_snapshot(
        self, from_node: int, stats: PeerStats, group: int, m: Message, exc: Exception
    ) -> None:
        stats.rejected += 1
        self.stats.rejected_messages += 1
        self.stats.rejected_snapshots += 1
        unlogged = self._may_log_rejection(from_node)
        if unlogged is None:
            return
        meta = m.snapshot.meta if m.snapshot is not None else None
        self._log.warning(
            "peer_snapshot_rejected",
            peer=from_node,
            group=group,
            term=m.term,
            index=None if meta is None else meta.index,
            bytes=0 if m.snapshot is None else len(m.snapshot.data),
            reason=str(exc) or type(exc).__name__,
            not_logged_since_last=unlogged,
        )

    def _reject_message(
        self, from_node: int, stats: PeerStats, group: int, m: Message, exc: PeerMessageError
    ) -> None:
        stats.rejected += 1
        self.stats.rejected_messages += 1
        unlogged = self._may_log_rejection(from_node)
        if unlogged is None:
            return
        self._log.warning(
            "peer_message_rejected",
            peer=from_node,
            group=group,
            type=m.type.name,
            field=exc.field,
            reason=exc.reason,
            not_logged_since_last=unlogged,
        )

    def _may_log_rejection(self, source: object) -> int | None:
        """None while this source's rejections are not logged (one line per
        REJECT_LOG_INTERVAL); else how many were not logged since the last line."""
        now = time.monotonic()
        last, unlogged = self._reject_log.get(source, (None, 0))
        if last is not None and now - last < REJECT_LOG_INTERVAL:
            self._reject_log[source] = (last, unlogged + 1)
            return None
        self._reject_log[source] = (now, 0)
        return unlogged

    def _reject_frame(self, from_node: int, reason: str) -> None:
        # Framing is lost after a bad frame, so the connection is closed; the dialer redials.
        self.stats.bad_frames += 1
        unlogged = self._may_log_rejection(from_node)
        if unlogged is not None:
            self._log.warning(
                "frame_rejected", peer=from_node, reason=reason, not_logged_since_last=unlogged
            )

    def _deliver(self, from_node: int, items: list[Item]) -> None:
        try:
            self._on_batch(from_node, items)
        except Exception:  # a handler bug must not tear down the connection or the node
            self._log.exception("on_batch_failed", peer=from_node, messages=len(items))


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket as asyncio.start_server makes one (address reuse)."""
    family, _, _, _, addr = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.create_server(addr, family=family, backlog=100)
    sock.setblocking(False)
    return sock


def _remote(where: asyncio.StreamWriter | tuple[Any, ...] | str) -> str:
    peer = where.get_extra_info("peername") if isinstance(where, asyncio.StreamWriter) else where
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


# OpenSSL's X509_V_ERR_* codes a refused certificate's verification names.
_VERIFY_REASONS = {
    9: "expired",  # not yet valid
    10: "expired",
    18: "self_signed",  # a self-signed leaf
    19: "unknown_ca",  # a chain sent up to its root, a CA that is not ours
    2: "unknown_ca",
    20: "unknown_ca",  # issuer not among the trusted CAs
    21: "unknown_ca",
}
_SSL_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no_certificate",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "no_certificate",
    "WRONG_VERSION_NUMBER": "not_tls",
    "HTTP_REQUEST": "not_tls",
    "UNKNOWN_PROTOCOL": "not_tls",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "expired",
    "TLSV1_ALERT_UNKNOWN_CA": "unknown_ca",
}


def handshake_reason(exc: ssl.SSLError) -> tuple[str, str]:
    """A failed TLS handshake's reason code (TransportStats.refused) and message."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = _VERIFY_REASONS.get(exc.verify_code, "bad_certificate")
        return code, f"certificate refused: {exc.verify_message}"
    reason = str(exc.reason or "")
    return _SSL_REASONS.get(reason, "tls_error"), f"TLS handshake failed: {reason or exc}"
