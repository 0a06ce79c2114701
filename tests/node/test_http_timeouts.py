"""The HTTP server's timeouts over raw sockets, against the API of a node that is
assembled but not started: a connection that stays idle, sends its request head too
slowly, or stops sending a body it announced, is closed (a slow body answered 408 JSON
first); before, none of them was ever timed out."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from aiohttp import web

from shardset_node.config import HttpLimits, NodeConfig
from shardset_node.frontends.http import build_app, runner
from shardset_node.main import assemble
from shardset_proto.commands import MAX_VALUE_BYTES
from shardset_proto.shardmap import NodeAddress, bootstrap_map

LIMITS = HttpLimits(keepalive_timeout=0.5, body_timeout=0.5)
BOUND = 30.0  # bounds a test that would otherwise hang: not a speed claim


@asynccontextmanager
async def _api(tmp_path: Path) -> AsyncIterator[int]:
    boot = bootstrap_map({1: NodeAddress("127.0.0.1:1", "http://127.0.0.1:2")}, 1, 1)
    process = assemble(NodeConfig(1, tmp_path, "127.0.0.1", 0, boot, fsync=False))
    app = build_app(
        process.node, process.kv, process.reads, process.admin, process.metrics.registry,
        max_value_bytes=MAX_VALUE_BYTES, limits=LIMITS,
    )  # fmt: skip
    api = runner(app, LIMITS)
    await api.setup()
    site = web.TCPSite(api, "127.0.0.1", 0)
    await site.start()
    try:
        yield api.addresses[0][1]
    finally:
        await api.cleanup()
        process.node.engine.close()


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    out = b""
    while chunk := await asyncio.wait_for(reader.read(65536), BOUND):
        out += chunk
    return out


def _run(tmp_path: Path, send: bytes) -> bytes:
    async def scenario() -> bytes:
        async with _api(tmp_path) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(send)
            try:
                return await _read_all(reader)
            finally:
                writer.close()

    return asyncio.run(scenario())


def test_idle_connection_is_closed(tmp_path: Path) -> None:
    assert _run(tmp_path, b"") == b""


def test_slow_request_head_is_closed(tmp_path: Path) -> None:
    assert _run(tmp_path, b"GET /healthz HTTP/1.1\r\nHost: x\r\n") == b""


def test_kept_alive_connection_is_closed_when_idle(tmp_path: Path) -> None:
    out = _run(tmp_path, b"GET /v1/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200")


def test_slow_body_is_answered_408_and_closed(tmp_path: Path) -> None:
    head = b"PUT /v1/kv/k HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    out = _run(tmp_path, head + b"0123456789")
    status, _, body = out.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 408")
    assert json.loads(body)["error"] == "body_timeout"
