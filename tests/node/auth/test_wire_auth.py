"""The wire protocol's authentication over a real TLS socket (WireServer.accept on a
listener with the node's server context): the auth request good and bad, requests of
an unauthenticated connection answered 401 naming why, roles and key prefixes per
request, client certificates, and a user deleted losing its open connection on its
next frame; an insecure server answers auth 400."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import msgpack
from authkit import OTHER, STORE, TOKENS, FakeKv, FakeReads, Pki, Users
from structlog.testing import capture_logs

from shardset_node.auth import Authenticator
from shardset_node.frontends.wire import WireServer
from shardset_node.kv import KvWrites
from shardset_node.reads import ReadPath
from shardset_proto import framing, wire

TIMEOUT = 30.0  # a bound for a test that would otherwise hang, not a speed claim
Answers = dict[int, tuple[int, dict[str, Any]]]


class _Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.frames = framing.FrameReader(limit=framing.MAX_CLIENT_FRAME)
        self.pending: list[bytes] = []

    def send(self, requests: list[list[Any]]) -> None:
        self.writer.write(wire.encode_batch(requests))

    async def answers(self, n: int) -> Answers:
        got: Answers = {}
        while len(got) < n:
            while not self.pending:
                data = await asyncio.wait_for(self.reader.read(1 << 16), TIMEOUT)
                if not data:
                    raise ConnectionError(f"closed after {len(got)} of {n} answers: {got}")
                self.pending.extend(self.frames.feed(data))
            for rid, status, body in msgpack.unpackb(self.pending.pop(0), raw=False):
                got[rid] = (status, body)
        return got

    async def closed(self) -> bool:
        """The server closed the connection (it sends nothing more)."""
        try:
            return await asyncio.wait_for(self.reader.read(1 << 16), TIMEOUT) == b""
        except (ConnectionError, ssl.SSLError):
            return True


Connect = Callable[[str | None], Awaitable[_Client]]


@asynccontextmanager
async def _served(
    pki: Pki, auth: Authenticator | None, kv: FakeKv | None = None
) -> AsyncIterator[Connect]:
    server = WireServer(
        1, cast(KvWrites, kv or FakeKv()), cast(ReadPath, FakeReads()),
        max_value_bytes=1 << 20, auth=auth,
    )  # fmt: skip
    ctx = pki.server(require_client_cert=False)
    listener = await asyncio.start_server(server.accept, "127.0.0.1", 0, ssl=ctx)
    port = listener.sockets[0].getsockname()[1]
    opened: list[_Client] = []

    async def connect(who: str | None) -> _Client:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=pki.client(who), server_hostname="127.0.0.1"
        )
        writer.write(wire.hello(wire.VERSION, 0))
        hello = await asyncio.wait_for(reader.readexactly(framing.HEADER_SIZE + 14), TIMEOUT)
        assert wire.parse_hello(hello[framing.HEADER_SIZE :]) == (wire.VERSION, 1)
        client = _Client(reader, writer)
        opened.append(client)
        return client

    try:
        yield connect
    finally:
        for client in opened:
            client.writer.close()
        listener.close()


def _run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT * 2))


def _get(rid: int, key: str) -> list[Any]:
    return [rid, *wire.get(key, "eventual", None, 0)]


def _put(rid: int, key: str) -> list[Any]:
    return [rid, *wire.put(key, b"v", None)]


def test_auth_request_then_requests_in_the_same_frame(store_pki: Pki, users: Users) -> None:
    async def scenario() -> None:
        kv = FakeKv()
        async with _served(store_pki, Authenticator(STORE, users), kv) as connect:
            client = await connect(None)
            client.send([[1, *wire.auth(TOKENS["writer"])], _put(2, "k"), _get(3, "k")])
            got = await client.answers(3)
            assert wire.parse_auth_answer(*got[1]) == ("writer", "readwrite")
            assert (got[2][0], got[3][0]) == (200, 200)
            assert kv.writes == [b"k"]

    _run(scenario)


def test_unauthenticated_requests_get_401_and_the_connection_lives(
    store_pki: Pki, users: Users
) -> None:
    async def scenario() -> None:
        async with _served(store_pki, Authenticator(STORE, users)) as connect:
            client = await connect(None)
            client.send([_get(1, "k"), _put(2, "k")])
            got = await client.answers(2)
            for status, body in got.values():
                assert (status, body["error"]) == (401, "unauthenticated")
                assert '"auth", token' in body["message"]
            client.send([[3, *wire.auth(TOKENS["reader"])], _get(4, "k")])
            got = await client.answers(2)
            assert (got[3][0], got[4][0]) == (200, 200)

    _run(scenario)


def test_bad_token_is_answered_401_then_closed(store_pki: Pki, users: Users) -> None:
    async def scenario() -> None:
        kv = FakeKv()
        async with _served(store_pki, Authenticator(STORE, users), kv) as connect:
            client = await connect(None)
            client.send([[7, *wire.auth("sst_never-issued")], _put(8, "k")])
            got = await client.answers(1)
            status, body = got[7]
            assert (status, body["error"]) == (401, "unauthenticated")
            assert "unknown token" in body["message"]
            assert await client.closed()
            assert kv.writes == []  # the request after the refused auth never ran

    _run(scenario)


def test_roles_and_prefixes_per_request(store_pki: Pki, users: Users) -> None:
    async def scenario() -> None:
        await _roles_and_prefixes(store_pki, users)

    with capture_logs() as logs:
        _run(scenario)
    refusals = [e for e in logs if e["event"] == "wire_request_refused"]
    assert len(refusals) == 3  # logged with the reason, the remote and who it claimed
    assert all(e["remote"].startswith("127.0.0.1:") and e["reason"] for e in refusals)
    assert {e["claimed"] for e in refusals} == {
        "user reader (role read, cert)",
        "user app (role readwrite, token)",
    }


async def _roles_and_prefixes(store_pki: Pki, users: Users) -> None:
    async with _served(store_pki, Authenticator(STORE, users)) as connect:
        reader = await connect("reader")  # a user certificate: no auth request needed
        reader.send([_get(1, "k"), _put(2, "k"), [3, *wire.cas("k", None, b"v", None)]])
        got = await reader.answers(3)
        assert got[1][0] == 200
        for rid in (2, 3):
            assert got[rid][0] == 403 and "may not do kv.write" in got[rid][1]["message"]
        app = await connect(None)
        app.send([[1, *wire.auth(TOKENS["app"])], _put(2, "app/x"), _put(3, "other")])
        got = await app.answers(3)
        assert got[2][0] == 200
        assert got[3][0] == 403 and "'other' is outside the prefixes" in got[3][1]["message"]


def test_certificates_of_nodes_operator_and_other_stores(store_pki: Pki, users: Users) -> None:
    async def scenario() -> None:
        async with _served(store_pki, Authenticator(STORE, users)) as connect:
            for who in ("node-2", "operator", "writer"):
                client = await connect(who)
                client.send([_put(1, "k")])
                assert (await client.answers(1))[1][0] == 200, who
            for who, says in (("other-operator", f"store {OTHER}"), ("gone", "user gone")):
                client = await connect(who)
                client.send([_get(1, "k")])
                status, body = (await client.answers(1))[1]
                assert status == 401 and says in body["message"], (who, body)

    _run(scenario)


def test_deleted_user_loses_its_open_connection_on_the_next_frame(
    store_pki: Pki, users: Users
) -> None:
    async def scenario() -> None:
        async with _served(store_pki, Authenticator(STORE, users)) as connect:
            by_token = await connect(None)
            by_token.send([[1, *wire.auth(TOKENS["writer"])], _put(2, "k")])
            by_cert = await connect("writer")
            by_cert.send([_put(1, "k")])
            assert (await by_token.answers(2))[2][0] == 200
            assert (await by_cert.answers(1))[1][0] == 200
            users.delete("writer")
            by_token.send([_put(3, "k"), _get(4, "k")])
            by_cert.send([_get(2, "k")])
            got = await by_token.answers(2)
            assert {s for s, _ in got.values()} == {401}
            assert "revoked token: user writer" in got[3][1]["message"]
            status, body = (await by_cert.answers(1))[2]
            assert status == 401 and "no longer a user" in body["message"]

    _run(scenario)


def test_insecure_server_answers_auth_400(store_pki: Pki) -> None:
    async def scenario() -> None:
        async with _served(store_pki, None) as connect:
            client = await connect(None)
            client.send([[1, *wire.auth(TOKENS["writer"])], _put(2, "k")])
            got = await client.answers(2)
            assert got[1][0] == 400 and got[1][1]["error"] == "auth_disabled"
            assert got[2][0] == 200  # nothing checked: the node runs without TLS

    _run(scenario)
