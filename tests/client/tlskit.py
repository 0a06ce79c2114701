"""A throwaway HTTPS server on loopback with certificates from shardset_proto.pki, for
the client's TLS error tests: it answers /v1/shardmap with a fixed status and body."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from shardset_proto import pki, urls
from shardset_proto.identity import Identity

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
        return web.json_response(body or {}, status=status)

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
