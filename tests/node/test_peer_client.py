"""PeerClient: what another node answers is peer input too. An answer that is not a
JSON object, or that never ends, is a 502 naming the peer, never a crash of the call
(a 500 in whatever admin action made it); a node missing from the map is retryable."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web

from shardset_node.peers import client as peer_client
from shardset_node.peers.client import PeerClient
from shardset_proto.admin import ReadIndex
from shardset_proto.errors import ApiError
from shardset_proto.shardmap import NodeAddress, bootstrap_map

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _call(handler: Handler, node: int = 2) -> dict[str, object]:
    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    nodes = {
        1: NodeAddress("127.0.0.1:1", "http://127.0.0.1:1"),
        2: NodeAddress("127.0.0.1:2", f"http://127.0.0.1:{port}"),
    }
    peers = PeerClient(1, lambda: bootstrap_map(nodes, 1, 2))
    try:
        return await asyncio.wait_for(peers.call(node, ReadIndex(shard=1), timeout=10), 20)
    finally:
        await peers.close()
        await runner.cleanup()


def answering(body: str, status: int = 200) -> Handler:
    async def handler(_: web.Request) -> web.StreamResponse:
        return web.Response(text=body, status=status, content_type="application/json")

    return handler


@pytest.mark.parametrize(
    ("body", "status", "what"),
    [
        ("<html>proxy error</html>", 200, "not JSON"),
        ("<html>proxy error</html>", 500, "not JSON"),
        ("[1, 2]", 200, "a JSON list"),
        ('"ok"', 409, "a JSON str"),
        ("[" * 100_000, 200, "not JSON"),
    ],
)
def test_a_peer_answer_that_is_not_a_json_object_is_a_502(
    body: str, status: int, what: str
) -> None:
    with pytest.raises(ApiError) as caught:
        asyncio.run(_call(answering(body, status)))
    assert caught.value.status == 502 and caught.value.code == "bad_peer_answer"
    assert "node 2 read-index" in str(caught.value) and what in str(caught.value)


def test_an_endless_peer_answer_is_cut_at_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peer_client, "MAX_ANSWER_BYTES", 1 << 20)

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        chunk = b" " * 65536
        for _ in range(1000):  # 64 MiB, far past the limit
            await resp.write(chunk)
        return resp

    with pytest.raises(ApiError, match="more than 1048576 bytes") as caught:
        asyncio.run(_call(endless))
    assert caught.value.status == 502


def test_a_good_answer_and_an_error_answer_pass_through() -> None:
    ok = asyncio.run(_call(answering('{"index": 7}')))
    assert ok == {"index": 7}
    with pytest.raises(ApiError) as caught:
        asyncio.run(_call(answering('{"error": "not_leader", "leader": 3}', 307)))
    assert caught.value.status == 503 and caught.value.extra["leader"] == 3


def test_a_node_missing_from_the_map_is_retryable() -> None:
    with pytest.raises(ApiError, match="not in the shard map") as caught:
        asyncio.run(_call(answering("{}"), node=9))
    assert caught.value.status == 503
