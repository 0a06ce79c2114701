"""The wire server: the binary client protocol (shardset_proto.wire). A node with TLS
serves it on its own wire port (`accept`: a TLS connection, whose hello it reads); an
insecure node on its peer port, for the connections the transport hands over after a
client's hello (`serve`).

With an Authenticator (a node with TLS) a connection is its client certificate's
identity, or the user whose token its `auth` request carries; until then each request
is answered 401 naming why. Every request is authorized (get: kv.read; put, delete,
cas: kv.write; on its key, within the user's prefixes) and a user's connection is
checked against the current user table before each frame of requests, so a user
deleted loses its open connections on their next frame.

Requests of a batch run concurrently; answers completed in one event-loop iteration
leave together (in frames of at most MAX_REQUESTS_PER_FRAME answers). Flow control
(config.WireLimits): a frame of more than MAX_REQUESTS_PER_FRAME requests is refused
unread; a connection is not read while it has too many requests or request bytes
running, nor while the node's wire connections together hold too many bytes; a large
frame's requests are started a few at a time, yielding to the loop between; a
connection idle for too long, or slow to finish a frame it began, is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from typing import Any

import structlog

from shardset_node.auth import Authenticator, AuthError, Principal
from shardset_node.config import WireLimits
from shardset_node.frontends.unexpected import cause
from shardset_node.kv import KvWrites
from shardset_node.reads import ReadPath
from shardset_proto import wire
from shardset_proto.errors import ApiError
from shardset_proto.framing import (
    CLIENT_MAGIC,
    MAX_CLIENT_FRAME,
    FrameError,
    FrameReader,
    read_hello,
)
from shardset_proto.identity import Action
from shardset_proto.limits import (
    MAX_REQUESTS_PER_FRAME,
    check_idem,
    check_key,
    check_requests_per_frame,
    check_value,
)

__all__ = ["WireLimits", "WireServer"]

log = structlog.get_logger(__name__)


class Budget:
    """Units (requests or bytes) in use against a limit; `room` waits until it is under."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._under = asyncio.Event()
        self._under.set()

    def take(self, n: int) -> None:
        self.used += n
        if self.used >= self.limit:
            self._under.clear()

    def give(self, n: int) -> None:
        self.used -= n
        if self.used < self.limit:
            self._under.set()

    async def room(self) -> None:
        while self.used >= self.limit:
            await self._under.wait()


class WireServer:
    """Serves client connections handed over by the transport (see module doc)."""

    def __init__(
        self,
        node_id: int,
        kv: KvWrites,
        reads: ReadPath,
        *,
        max_value_bytes: int,
        limits: WireLimits | None = None,
        auth: Authenticator | None = None,
    ) -> None:
        self.node_id = node_id
        self.auth = auth
        self.kv = kv
        self.reads = reads
        self.max_value_bytes = max_value_bytes
        self.limits = limits or WireLimits()
        self.bytes = Budget(self.limits.node_bytes)  # shared by every connection
        self.connections = 0
        self.requests = 0
        self.closed_idle = 0
        self.refused = 0  # requests answered 401 or 403
        self._ops: dict[str, Callable[[list[Any]], Any]] = {
            wire.Op.PUT: self._put,
            wire.Op.DELETE: self._delete,
            wire.Op.CAS: self._cas,
            wire.Op.GET: self._get,
        }

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serves one connection of the wire port (asyncio.start_server's callback):
        reads the client's hello (within the frame timeout), serves, closes."""
        try:
            async with asyncio.timeout(self.limits.frame_timeout):
                _, version, _ = await read_hello(reader, (CLIENT_MAGIC,))
            await self.serve(reader, writer, version)
        except (OSError, EOFError, TimeoutError, FrameError) as e:
            log.info("wire_hello_failed", remote=_remote(writer), error=repr(e)[:200])
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    async def serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, version: int
    ) -> None:
        """Serves one connection whose hello said `version` (the caller read it)."""
        writer.write(wire.hello(wire.VERSION, self.node_id))
        if version != wire.VERSION:
            log.warning("wire_version_refused", client_version=version, ours=wire.VERSION)
            await writer.drain()
            return
        self.connections += 1
        try:
            await _Connection(self, reader, writer).run()
        finally:
            self.connections -= 1

    def authenticate(self, req: list[Any]) -> Principal:
        """The principal of an auth request's token; AuthError (401) naming why not."""
        assert self.auth is not None
        if len(req) != wire.ARITY[wire.Op.AUTH] or not isinstance(req[2], str):
            raise AuthError(401, 'auth takes [id, "auth", token] with the token as text')
        return self.auth.from_token(req[2])

    def authorize(self, req: list[Any], principal: Principal | None, refusal: str) -> None:
        """Raises 401 (no principal) or 403 unless `principal` may run `req`."""
        if self.auth is None:
            return
        if principal is None:
            raise AuthError(401, refusal)
        action = Action.KV_READ if req[1] == wire.Op.GET else Action.KV_WRITE
        self.auth.authorize(principal, action, _key(req[2]))

    # --- operations: each returns (status, body) or raises ApiError ---------------------
    async def _put(self, req: list[Any]) -> tuple[int, dict[str, Any]]:
        _, _, key, value, idem = _shape(req, wire.ARITY[wire.Op.PUT])
        value = check_value(_bytes(value, "value"), self.max_value_bytes)
        return 200, await self.kv.put(_key(key), value, _idem(idem), "")

    async def _delete(self, req: list[Any]) -> tuple[int, dict[str, Any]]:
        _, _, key, idem = _shape(req, wire.ARITY[wire.Op.DELETE])
        return 200, await self.kv.delete(_key(key), _idem(idem), "")

    async def _cas(self, req: list[Any]) -> tuple[int, dict[str, Any]]:
        _, _, key, expected, value, idem = _shape(req, wire.ARITY[wire.Op.CAS])
        expected = None if expected is None else _bytes(expected, "expected")
        if value is not None:
            value = check_value(_bytes(value, "value"), self.max_value_bytes)
        return 200, await self.kv.cas(_key(key), expected, value, _idem(idem), "")

    async def _get(self, req: list[Any]) -> tuple[int, dict[str, Any]]:
        _, _, key, mode, staleness, token = _shape(req, wire.ARITY[wire.Op.GET])
        if mode is not None and not isinstance(mode, str):
            raise ApiError(400, "bad_field", "consistency must be a string or nil")
        body = await self.reads.get(
            _key(key),
            mode,
            _count(staleness, "max_staleness_ms"),
            _count(token, "min_index") or 0,
            "",
        )
        return (200 if body["value"] is not None else 404), body

    async def answer(
        self, req: Any, principal: Principal | None = None, refusal: str = ""
    ) -> list[Any]:
        """One request's answer, `[id, status, body]`, run as `principal` (checked when
        the server has an Authenticator; `refusal` says why there is none); never raises."""
        rid = req[0] if isinstance(req, list) and req and isinstance(req[0], int) else 0
        self.requests += 1
        try:
            if not isinstance(req, list) or len(req) < 3 or not isinstance(req[1], str):
                raise ApiError(400, "bad_request", "a request is [id, op, key, ...]")
            op = self._ops.get(req[1])
            if op is None:
                ops = ", ".join([*self._ops, wire.Op.AUTH])
                raise ApiError(400, "bad_op", f"unknown op {req[1]!r}; one of {ops}")
            self.authorize(req, principal, refusal)
            status, body = await op(req)
            return [rid, status, body]
        except AuthError as e:
            self.refused += 1
            return [rid, e.status, _error_body(e)]
        except ApiError as e:
            return [rid, e.status, _error_body(e)]
        except Exception as e:  # a bug answers 500 and the connection lives on
            op_name = req[1] if isinstance(req, list) and len(req) > 1 else None
            log.error("wire_request_failed", op=op_name, **cause(e))
            return [rid, 500, {"error": "internal", "message": "internal error; see node log"}]


class _Closing(Exception):
    """The connection is closed on purpose (idle, or a frame left half-sent)."""


class _Frame:
    """The budget one frame holds until its last request is answered."""

    __slots__ = ("left", "size")

    def __init__(self, size: int, left: int) -> None:
        self.size = size
        self.left = left


class _Connection:
    """One client connection: reads batches of requests, answers each as it completes,
    and writes the answers completed in one loop iteration together."""

    def __init__(
        self, server: WireServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.limits = server.limits
        self.reader = reader
        self.writer = writer
        self.loop = asyncio.get_running_loop()
        self.tasks: set[asyncio.Task[None]] = set()
        self.answers: list[list[Any]] = []
        self.flush_scheduled = False
        self.requests = Budget(self.limits.connection_requests)
        self.bytes = Budget(self.limits.connection_bytes)
        self.frame_began: float | None = None  # when the frame now arriving began
        self.held: set[_Frame] = set()
        self.principal: Principal | None = None  # who the requests run as
        self.refusal = ""  # why there is no principal (each request's 401 says it)
        self.closing = False  # an auth request was refused: answer it, then close
        if server.auth is not None:
            self._certificate(server.auth)

    def _certificate(self, auth: Authenticator) -> None:
        """The connection's principal from its client certificate, if it sent one."""
        try:
            self.principal = auth.from_certificate(self.writer.get_extra_info("ssl_object"))
        except AuthError as e:
            self.refusal = str(e)
            self._log_refusal(e)
            return
        if self.principal is None:
            self.refusal = (
                'not authenticated: send [id, "auth", token] first, or connect with a '
                f"client certificate of store {auth.store}"
            )

    def _log_refusal(self, e: AuthError) -> None:
        log.warning("wire_auth_refused", reason=str(e), remote=self._peer(), claimed=e.claimed)

    def _refresh(self) -> None:
        """Before each frame: the principal as the user table has it now."""
        auth = self.server.auth
        if auth is None or self.principal is None:
            return
        try:
            self.principal = auth.refresh(self.principal)
        except AuthError as e:
            self.principal, self.refusal = None, str(e)
            self._log_refusal(e)

    def _auth_request(self, req: list[Any]) -> None:
        """Answers an auth request at once (the requests after it run as its user); a
        refused one closes the connection once answered."""
        rid = req[0] if isinstance(req[0], int) else 0
        if self.server.auth is None:
            msg = "this node runs without TLS and checks no credentials; send no auth"
            self._queue([rid, 400, {"error": "auth_disabled", "message": msg}])
            return
        try:
            principal = self.server.authenticate(req)
        except AuthError as e:
            self.server.refused += 1
            self._log_refusal(e)
            self._queue([rid, 401, _error_body(e)])
            self.principal, self.refusal, self.closing = None, str(e), True
            return
        self.principal = principal
        log.info("wire_authenticated", user=principal.name, remote=self._peer())
        self._queue([rid, 200, wire.auth_answer(principal.name, str(principal.row))])

    async def run(self) -> None:
        frames = FrameReader(self.reader, limit=MAX_CLIENT_FRAME)
        try:
            while True:
                payloads = await self._read(frames)
                if payloads is None:
                    return
                for payload in payloads:
                    await self._room()  # over a bound: answers first, then read on
                    await self._dispatch(payload)
                    if self.closing:
                        self._flush()
                        await self.writer.drain()
                        return
                await self.writer.drain()  # a client that stops reading stops being read
        except FrameError as e:
            self._send([[0, 400, {"error": "bad_frame", "message": str(e)}]])
        except _Closing as e:
            self.server.closed_idle += 1
            log.info("wire_connection_closed", reason=str(e), peer=self._peer())
        except ConnectionError:
            pass  # the client went away; its requests are cancelled below
        finally:
            for task in list(self.tasks):
                task.cancel()
            for held in list(self.held):  # a task cancelled unstarted never releases
                self._release(held)

    async def _room(self) -> None:
        await self.requests.room()
        await self.bytes.room()
        await self.server.bytes.room()

    async def _read(self, frames: FrameReader) -> list[bytes] | None:
        """The next frames; _Closing when the client idles or dawdles over a frame."""
        while True:
            if frames.buffered:
                if self.frame_began is None:
                    self.frame_began = self.loop.time()
                timeout = self.frame_began + self.limits.frame_timeout - self.loop.time()
            else:
                self.frame_began = None
                timeout = self.limits.idle_timeout
            try:
                async with asyncio.timeout(max(timeout, 0.0)):
                    return await frames.read()
            except TimeoutError:
                if frames.buffered:
                    raise _Closing(
                        f"a frame begun {self.limits.frame_timeout}s ago is still incomplete "
                        f"({frames.buffered} bytes)"
                    ) from None
                if not self.tasks and not self.answers:
                    raise _Closing(f"idle for {self.limits.idle_timeout}s") from None

    async def _dispatch(self, payload: bytes) -> None:
        try:
            check_requests_per_frame(wire.batch_length(payload))
            batch = wire.decode_batch(payload)
        except wire.BatchError as e:
            self._queue([0, 400, {"error": "bad_frame", "message": str(e)}])
            return
        except ApiError as e:
            self._queue([0, e.status, _error_body(e)])
            return
        self._refresh()
        runs = self._runs(batch)
        if not runs:
            return
        held = _Frame(len(payload), len(runs))
        self.held.add(held)
        self.bytes.take(held.size)
        self.server.bytes.take(held.size)
        for i, (req, principal, refusal) in enumerate(runs, 1):
            task = self.loop.create_task(self._one(req, principal, refusal, held))
            self.tasks.add(task)
            self.requests.take(1)
            task.add_done_callback(self._done)
            if i % self.limits.yield_every == 0 and i < len(runs):
                await asyncio.sleep(0)  # a large frame must not hold the Raft loop

    def _runs(self, batch: list[Any]) -> list[tuple[Any, Principal | None, str]]:
        """The frame's requests with the principal each runs as, its auth requests
        answered on the way (in order: the requests after one run as its user); none
        after a refused auth request."""
        runs: list[tuple[Any, Principal | None, str]] = []
        for req in batch:
            if isinstance(req, list) and len(req) >= 2 and req[1] == wire.Op.AUTH:
                self._auth_request(req)
                if self.closing:
                    break
            else:
                runs.append((req, self.principal, self.refusal))
        return runs

    def _done(self, task: asyncio.Task[None]) -> None:
        # Counted here, once the task is out of the set: a request that finishes
        # must always make room (see test_wire_server, W1).
        self.tasks.discard(task)
        self.requests.give(1)

    async def _one(self, req: Any, principal: Principal | None, refusal: str, held: _Frame) -> None:
        try:
            answer = await self.server.answer(req, principal, refusal)
            if answer[1] == 403:  # (401s: the connection's state was logged once)
                log.warning(
                    "wire_request_refused", reason=answer[2]["message"], remote=self._peer(),
                    claimed=str(principal),
                )  # fmt: skip
            self._queue(answer)
        finally:
            held.left -= 1
            if held.left == 0:
                self._release(held)

    def _release(self, held: _Frame) -> None:
        if held in self.held:
            self.held.discard(held)
            self.bytes.give(held.size)
            self.server.bytes.give(held.size)

    def _queue(self, answer: list[Any]) -> None:
        self.answers.append(answer)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        answers, self.answers = self.answers, []
        self._send(answers)

    def _send(self, answers: list[list[Any]]) -> None:
        if answers and not self.writer.is_closing():
            with contextlib.suppress(ConnectionError, RuntimeError):
                for data in wire.encode_batches(answers, MAX_REQUESTS_PER_FRAME):
                    self.writer.write(data)

    def _peer(self) -> str:
        return _remote(self.writer)


def _remote(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)


def _error_body(e: ApiError) -> dict[str, Any]:
    body = e.body()
    if e.retry_after is not None:
        body["retry_after"] = e.retry_after
    return body


def _shape(req: list[Any], n: int) -> list[Any]:
    if len(req) != n:
        raise ApiError(400, "bad_request", f"{req[1]} takes {n} fields, got {len(req)}")
    return req


def _bytes(value: Any, name: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise ApiError(400, "bad_field", f"{name} must be bytes or a string")


def _key(key: Any) -> bytes:
    raw = _bytes(key, "key")
    try:
        raw.decode()
    except UnicodeDecodeError:
        raise ApiError(400, "bad_key", "key must be UTF-8") from None
    return check_key(raw)


def _idem(raw: Any) -> bytes | None:
    return None if raw is None else check_idem(_bytes(raw, "idempotency_key"))


def _count(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ApiError(400, "bad_parameter", f"{name} must be a non-negative integer")
    return value
