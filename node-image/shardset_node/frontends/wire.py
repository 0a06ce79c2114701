"""The wire server: the binary client protocol (shardset_proto.wire), served on the peer
port for the connections the transport hands over after a client's hello.

Requests of a batch run concurrently; answers completed in one event-loop iteration
leave as one frame. A connection with MAX_IN_FLIGHT requests running is not read until
half of them are answered.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog

from shardset_node.kv import KvWrites
from shardset_node.reads import ReadPath
from shardset_proto import wire
from shardset_proto.errors import ApiError
from shardset_proto.framing import MAX_CLIENT_FRAME, FrameError, FrameReader
from shardset_proto.limits import check_idem, check_key, check_value

__all__ = ["MAX_IN_FLIGHT", "WireServer"]

MAX_IN_FLIGHT = 8192  # requests per connection before the node stops reading it

log = structlog.get_logger(__name__)


class WireServer:
    """Serves client connections handed over by the transport (see module doc)."""

    def __init__(
        self, node_id: int, kv: KvWrites, reads: ReadPath, *, max_value_bytes: int
    ) -> None:
        self.node_id = node_id
        self.kv = kv
        self.reads = reads
        self.max_value_bytes = max_value_bytes
        self.connections = 0
        self.requests = 0
        self._ops: dict[str, Callable[[list[Any]], Any]] = {
            wire.Op.PUT: self._put,
            wire.Op.DELETE: self._delete,
            wire.Op.CAS: self._cas,
            wire.Op.GET: self._get,
        }

    async def serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, version: int
    ) -> None:
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
            body = e.body()
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
        frames = FrameReader(self.reader, limit=MAX_CLIENT_FRAME)
        try:
            while True:
                await self.room.wait()
                payloads = await frames.read()
                if payloads is None:
                    return
                for payload in payloads:
                    self._dispatch(payload)
                await self.writer.drain()  # a client that stops reading stops being read
        except FrameError as e:
            self._send([[0, 400, {"error": "bad_frame", "message": str(e)}]])
        finally:
            for task in self.tasks:
                task.cancel()

    def _dispatch(self, payload: bytes) -> None:
        try:
            batch = wire.decode_batch(payload)
        except wire.BatchError as e:
            self._queue([0, 400, {"error": "bad_frame", "message": str(e)}])
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
                self.writer.write(wire.encode_batch(answers))


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
