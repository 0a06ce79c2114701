"""A throwaway HTTPS server on loopback with certificates from shardset_proto.pki, for
the client's TLS error tests: it answers /v1/shardmap with a fixed status and body."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from shardset_proto import framing, pki, urls, wire
from shardset_proto.framing import FrameReader
from shardset_proto.identity import Identity
from shardset_proto.slots import SLOTS

STORE = "local.test"
NOW = dt.datetime.now(dt.UTC)


def write_pair(directory: Path, name: str, pair: pki.KeyPair) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    cert.write_bytes(pair.cert_pem)
    key.write_bytes(pair.key_pem)
    return cert, key


def leaf(
    ca: pki.KeyPair,
    identity: Identity,
    *,
    now: dt.datetime = NOW,
    days: int = 30,
    dns: tuple[str, ...] = ("localhost",),
    ips: tuple[str, ...] = ("127.0.0.1",),
) -> pki.KeyPair:
    return pki.issue_leaf(ca, identity, now, dns=dns, ips=ips, days=days)


@asynccontextmanager
async def https_server(
    cert: Path, key: Path, status: int = 200, body: dict[str, Any] | None = None
) -> AsyncIterator[tuple[int, list[dict[str, str]]]]:
    """Serve GET /v1/shardmap over TLS on 127.0.0.1; yields (port, the Authorization
    headers each request carried)."""
    seen: list[dict[str, str]] = []

    async def shardmap(request: web.Request) -> web.Response:
        seen.append({"authorization": request.headers.get("Authorization", "")})
        return web.json_response(body if body is not None else {}, status=status)

    app = web.Application()
    app.router.add_get(urls.SHARDMAP, shardmap)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    await web.SockSite(runner, sock, ssl_context=ctx).start()
    try:
        yield port, seen
    finally:
        await runner.cleanup()


def one_node_map(api_port: int, wire_port: int) -> dict[str, Any]:
    """A shard map (GET /v1/shardmap) of one TLS node owning every slot."""
    return {
        "epoch": 1,
        "slots": [[0, SLOTS, 1]],
        "replicas": {"1": [1]},
        "nodes": {
            "1": {
                "peer": "127.0.0.1:1",
                "api": f"https://127.0.0.1:{api_port}",
                "admin": "https://127.0.0.1:1",
                "wire": f"127.0.0.1:{wire_port}",
            }
        },
        "leaders": {"1": 1},
    }


@asynccontextmanager
async def wire_server(
    cert: Path, key: Path, auth_status: int = 200
) -> AsyncIterator[tuple[int, list[list[Any]]]]:
    """A TLS wire-protocol server: answers the hello, an auth request with
    `auth_status`, and any other request 200 as a write; yields (port, requests seen)."""
    seen: list[list[Any]] = []
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frames = FrameReader(reader, limit=framing.MAX_CLIENT_FRAME)
        try:
            await frames.read()
            writer.write(wire.hello(wire.VERSION, 1))
            while (payloads := await frames.read()) is not None:
                for payload in payloads:
                    answers = [_answer(r, auth_status, seen) for r in wire.decode_batch(payload)]
                    writer.write(wire.encode_batch(answers))
        except (ConnectionError, framing.FrameError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ctx)
    async with server:
        yield server.sockets[0].getsockname()[1], seen


def _answer(request: list[Any], auth_status: int, seen: list[list[Any]]) -> list[Any]:
    seen.append(request)
    if request[1] == "auth":
        if auth_status == 200:
            return [request[0], 200, wire.auth_answer("local-admin", "admin")]
        return [request[0], 401, {"error": "unauthenticated", "message": "unknown token"}]
    return [request[0], 200, {"shard": 1, "index": 7, "epoch": 1}]
