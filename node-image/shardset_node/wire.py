"""The binary client protocol: key-value requests as msgpack over one TCP connection.

HTTP costs a Python-level parse, a request object and a JSON body per operation on
both ends, which on a small machine is most of a put's CPU (docs/performance.md). This
protocol carries the same operations, with the same answers, pipelined and batched:

* It is served on the node's **peer port**. The transport tells a client from a peer by
  the first frame (shardset_node.transport.CLIENT_MAGIC), so no third port is needed and
  every address a client needs is already in the shard map (`nodes[n].peer`).
* Framing as in the transport: ``uint32 big-endian length | payload``. The client's
  hello is ``b"SHKV" | uint16 version | uint64 0``; the node answers with its own
  (``b"SHKV" | version | node id``) and closes when the versions differ.
* Every later frame is a msgpack array of requests (client to node) or of answers
  (node to client). Everything queued during one event-loop iteration leaves in one
  frame, so many clients sharing a connection cost one write and one read per batch.
* Requests, each ``[id, op, key, ...]`` with `id` a client-chosen unsigned integer:

  ``[id, "put", key, value, idempotency_key | nil]``
  ``[id, "delete", key, idempotency_key | nil]``
  ``[id, "cas", key, expected | nil, value | nil, idempotency_key | nil]``
  ``[id, "get", key, consistency | nil, max_staleness_ms | nil, min_index]``

* Answers, in any order: ``[id, status, body]``. `status` and `body` are what the HTTP
  API would answer (200, 404 for a missing key, 307 with `leader` naming the node to
  ask, 409, 503, ...), except that a read's `value` is raw bytes, not base64.
* A frame that is not a msgpack array, or a request of the wrong shape, gets a 400
  naming what is wrong (with id 0 when no id can be read); framing errors close the
  connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgpack  # type: ignore[import-untyped]  # ships no type information
import structlog

from shardset_node.errors import ApiError
from shardset_node.limits import check_idem, check_key, check_value

if TYPE_CHECKING:
    from shardset_node.clientops import ClientOps as Node

__all__ = [
    "MAX_FRAME",
    "VERSION",
    "FrameError",
    "Frames",
    "WireServer",
    "frame",
    "hello",
    "parse_hello",
]

VERSION = 1
MAGIC = b"SHKV"  # the same bytes as shardset_node.transport.CLIENT_MAGIC
MAX_FRAME = 16 * 1024 * 1024
MAX_IN_FLIGHT = 8192  # requests per connection before the node stops reading it
_LENGTH = struct.Struct(">I")
_HELLO = struct.Struct(">4sHQ")
_READ_CHUNK = 256 * 1024

log = structlog.get_logger(__name__)


class FrameError(Exception):
    """The byte stream cannot be framed (oversized frame, bad hello): close it."""


def frame(payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload)) + payload


def hello(version: int, node_id: int) -> bytes:
    return frame(_HELLO.pack(MAGIC, version, node_id))


def parse_hello(payload: bytes) -> tuple[int, int]:
    """(version, node id) from a hello frame's payload."""
    if len(payload) < _HELLO.size:
        raise FrameError(f"hello of {len(payload)} bytes")
    magic, version, node_id = _HELLO.unpack_from(payload)
    if magic != MAGIC:
        raise FrameError(f"not a Shardset wire hello (magic {magic!r})")
    return version, node_id


class Frames:
    """Cuts a byte stream into frame payloads; `feed` returns every complete one."""

    def __init__(self, limit: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._limit = limit

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        while len(buf) - pos >= 4:
            (length,) = _LENGTH.unpack_from(buf, pos)
            if length > self._limit:
                raise FrameError(f"frame of {length} bytes exceeds the limit of {self._limit}")
            end = pos + 4 + length
            if end > len(buf):
                break
            out.append(bytes(buf[pos + 4 : end]))
            pos = end
        del buf[:pos]
        return out


class WireServer:
    """Serves client connections handed over by the transport (see module doc)."""

    def __init__(self, node: Node, *, max_value_bytes: int) -> None:
        self.node = node
        self.max_value_bytes = max_value_bytes
        self.connections = 0
        self.requests = 0
        self._ops: dict[str, Callable[[list[Any]], Any]] = {
            "put": self._put,
            "delete": self._delete,
            "cas": self._cas,
            "get": self._get,
        }

    async def serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, version: int
    ) -> None:
        writer.write(hello(VERSION, self.node.id))
        if version != VERSION:
            log.warning("wire_version_refused", client_version=version, ours=VERSION)
            await writer.drain()
            return
        self.connections += 1
        try:
            await _Connection(self, reader, writer).run()
        finally:
            self.connections -= 1

    # --- operations: each returns (status, body) or raises ApiError ---------------------
    async def _put(self, req: list[Any]) -> tuple[int, dict[str, Any]]:
        _, _, key, value, idem = _shape(req, 5)
        value = check_value(_bytes(value, "value"), self.max_value_bytes)
        return 200, await self.node.put(_key(key), value, _idem(idem), "")

    async def _delete(self, req: list[Any]) -> tuple[int, dict[str, Any]]:
        _, _, key, idem = _shape(req, 4)
        return 200, await self.node.delete(_key(key), _idem(idem), "")

    async def _cas(self, req: list[Any]) -> tuple[int, dict[str, Any]]:
        _, _, key, expected, value, idem = _shape(req, 6)
        expected = None if expected is None else _bytes(expected, "expected")
        if value is not None:
            value = check_value(_bytes(value, "value"), self.max_value_bytes)
        return 200, await self.node.cas(_key(key), expected, value, _idem(idem), "")

    async def _get(self, req: list[Any]) -> tuple[int, dict[str, Any]]:
        _, _, key, mode, staleness, token = _shape(req, 6)
        if mode is not None and not isinstance(mode, str):
            raise ApiError(400, "bad_field", "consistency must be a string or nil")
        body = await self.node.get(
            _key(key),
            mode,
            _count(staleness, "max_staleness_ms"),
            _count(token, "min_index") or 0,
            "",
        )
        return (200 if body["value"] is not None else 404), body

    async def answer(self, req: Any) -> list[Any]:
        """One request's answer, `[id, status, body]`; never raises."""
        rid = req[0] if isinstance(req, list) and req and isinstance(req[0], int) else 0
        self.requests += 1
        try:
            if not isinstance(req, list) or len(req) < 3 or not isinstance(req[1], str):
                raise ApiError(400, "bad_request", "a request is [id, op, key, ...]")
            op = self._ops.get(req[1])
            if op is None:
                raise ApiError(
                    400, "bad_op", f"unknown op {req[1]!r}; one of {', '.join(self._ops)}"
                )
            status, body = await op(req)
            return [rid, status, body]
        except ApiError as e:
            body = {"error": e.code, "message": str(e), **e.extra}
            if e.retry_after is not None:
                body["retry_after"] = e.retry_after
            return [rid, e.status, body]
        except Exception as e:  # a bug answers 500 and the connection lives on
            log.exception("wire_request_failed", op=req[1] if isinstance(req, list) else None)
            return [rid, 500, {"error": "internal", "message": repr(e)}]


class _Connection:
    """One client connection: reads batches of requests, answers each as it completes,
    and writes the answers completed in one loop iteration as one frame."""

    def __init__(
        self, server: WireServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.loop = asyncio.get_running_loop()
        self.tasks: set[asyncio.Task[None]] = set()
        self.answers: list[list[Any]] = []
        self.flush_scheduled = False
        self.room = asyncio.Event()
        self.room.set()

    async def run(self) -> None:
        frames = Frames()
        try:
            while True:
                await self.room.wait()
                data = await self.reader.read(_READ_CHUNK)
                if not data:
                    return
                for payload in frames.feed(data):
                    self._dispatch(payload)
                await self.writer.drain()  # a client that stops reading stops being read
        except FrameError as e:
            self._send([[0, 400, {"error": "bad_frame", "message": str(e)}]])
        finally:
            for task in self.tasks:
                task.cancel()

    def _dispatch(self, payload: bytes) -> None:
        try:
            batch = msgpack.unpackb(payload, raw=False)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
            self._queue([0, 400, {"error": "bad_frame", "message": f"not msgpack: {e}"}])
            return
        if not isinstance(batch, list):
            self._queue([0, 400, {"error": "bad_frame", "message": "a frame is an array"}])
            return
        for req in batch:
            task = self.loop.create_task(self._one(req))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        if len(self.tasks) >= MAX_IN_FLIGHT:
            self.room.clear()

    async def _one(self, req: Any) -> None:
        self._queue(await self.server.answer(req))
        if len(self.tasks) <= MAX_IN_FLIGHT // 2:
            self.room.set()

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
                self.writer.write(frame(msgpack.packb(answers, use_bin_type=True)))


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
