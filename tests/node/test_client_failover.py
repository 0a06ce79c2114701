"""How `shardset.client` handles issue 15's failures of one node (fake nodes that answer
what real ones do, over HTTP and the wire protocol): a 507 `insufficient_storage` is a
leader that moved (the map is fetched again, the write retried at the new leader with
the same Idempotency-Key), and a read answered 503 `replica_corrupt` or `node_failed`
goes to another replica."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from shardset.client import Client, ShardsetError
from shardset_proto import urls, wire
from shardset_proto.framing import MAX_CLIENT_FRAME, FrameReader

SHARD = 1
EPOCH = 3
NODES = (1, 2, 3)


@dataclass
class Seen:
    """What a fake node was asked: (operation, key, Idempotency-Key)."""

    requests: list[tuple[str, str, str | None]] = field(default_factory=list)


# What a node answers an operation: (node, op, key) -> (status, body).
Behaviour = Callable[[int, str, str], tuple[int, dict[str, Any]]]


@dataclass
class FakeCluster:
    behaviour: Behaviour
    leader: int = 1  # the leader the shard maps served name (changed by the tests)
    seen: dict[int, Seen] = field(default_factory=lambda: {n: Seen() for n in NODES})
    api: dict[int, str] = field(default_factory=dict)
    peer: dict[int, str] = field(default_factory=dict)
    map_fetches: int = 0

    def shard_map(self) -> dict[str, Any]:
        self.map_fetches += 1
        return {
            "epoch": EPOCH,
            "slots": [[0, 16384, SHARD]],
            "replicas": {str(SHARD): list(NODES)},
            "nodes": {str(n): {"peer": self.peer[n], "api": self.api[n]} for n in NODES},
            "leaders": {str(SHARD): self.leader},
        }

    def answer(self, node: int, op: str, key: str, idem: str | None) -> tuple[int, dict[str, Any]]:
        self.seen[node].requests.append((op, key, idem))
        return self.behaviour(node, op, key)


def _http_app(cluster: FakeCluster, node: int) -> web.Application:
    async def shardmap(_: web.Request) -> web.Response:
        return web.json_response(cluster.shard_map())

    async def kv(request: web.Request) -> web.Response:
        op = "put" if request.method == "PUT" else "get"
        idem = request.headers.get("Idempotency-Key")
        status, body = cluster.answer(node, op, request.match_info["key"], idem)
        if op == "get" and isinstance(body.get("value"), bytes):
            body = {**body, "value": base64.b64encode(body["value"]).decode()}
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_get(urls.SHARDMAP, shardmap)
    app.router.add_route("*", urls.KV + "{key}", kv)
    return app


async def _wire_session(
    cluster: FakeCluster, node: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    frames = FrameReader(reader, limit=MAX_CLIENT_FRAME)
    hello = True
    while (payloads := await frames.read()) is not None:
        for payload in payloads:
            if hello:
                writer.write(wire.hello(wire.VERSION, node))
                hello = False
                continue
            answers = []
            for rid, op, key, *rest in wire.decode_batch(payload):
                idem = rest[-1] if op == "put" else None
                status, body = cluster.answer(node, op, key, idem)
                answers.append([rid, status, body])
            writer.write(wire.encode_batch(answers))
    writer.close()


@asynccontextmanager
async def fake_cluster(behaviour: Behaviour) -> AsyncIterator[FakeCluster]:
    cluster = FakeCluster(behaviour)
    runners: list[web.AppRunner] = []
    servers: list[asyncio.Server] = []
    try:
        for n in NODES:
            runner = web.AppRunner(_http_app(cluster, n))
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            runners.append(runner)
            port = runner.addresses[0][1]
            cluster.api[n] = f"http://127.0.0.1:{port}"

            def session(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int = n) -> Any:
                return _wire_session(cluster, n, r, w)

            server = await asyncio.start_server(session, "127.0.0.1", 0)
            servers.append(server)
            cluster.peer[n] = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        yield cluster
    finally:
        for server in servers:
            server.close()
        for runner in runners:
            await runner.cleanup()


def _written(node: int) -> dict[str, Any]:
    return {"shard": SHARD, "index": 10 + node, "epoch": EPOCH}


def _read(node: int, key: str) -> dict[str, Any]:
    return {
        "key": key,
        "value": b"v",
        "shard": SHARD,
        "index": 7,
        "epoch": EPOCH,
        "consistency": "eventual",
        "replica": node,
    }


FULL = {
    "error": "insufficient_storage",
    "message": "node 1's disk is full; nothing was written",
    "shard": SHARD,
    "node": 1,
}


@pytest.mark.parametrize("protocol", ["http", "wire"])
def test_a_write_refused_for_a_full_disk_is_retried_at_the_new_leader(protocol: str) -> None:
    """Node 1 led the shard, its disk filled: it answers 507 and hands its leadership
    to node 2. The client learns that from the map and writes there, with the same
    Idempotency-Key (a write the full node proposed is applied once)."""

    async def run() -> None:
        def behaviour(node: int, op: str, key: str) -> tuple[int, dict[str, Any]]:
            if node == 1:
                cluster.leader = 2  # the handoff, seen by the next map fetch
                return 507, FULL
            if node == 2:
                return 200, _written(node)
            return 307, {"error": "not_leader", "message": "ask 2", "leader": 2}

        async with fake_cluster(behaviour) as cluster:
            async with Client([cluster.api[1]], protocol=protocol, timeout=5.0) as client:
                result = await client.put("k", b"v")
            assert (result.shard, result.index) == (SHARD, 12)
            (first,) = cluster.seen[1].requests
            assert cluster.seen[2].requests[-1] == first  # same op, key, Idempotency-Key
            assert first[2] is not None
            assert cluster.map_fetches >= 2  # the first map, then the one after the 507

    asyncio.run(run())


@pytest.mark.parametrize("protocol", ["http", "wire"])
def test_a_full_disk_everywhere_is_reported_as_507_after_the_attempts(protocol: str) -> None:
    async def run() -> None:
        async with fake_cluster(lambda node, op, key: (507, FULL)) as cluster:
            async with Client(cluster.api.values(), protocol=protocol, attempts=4) as client:
                with pytest.raises(ShardsetError) as failed:
                    await client.put("k", b"v")
            assert failed.value.status == 507
            assert failed.value.body["error"] == "insufficient_storage"
            asked = {n for n in NODES if cluster.seen[n].requests}
            assert len(asked) >= 2  # not the full node again and again
            idems = {i for n in NODES for (_, _, i) in cluster.seen[n].requests}
            assert len(idems) == 1

    asyncio.run(run())


@pytest.mark.parametrize("protocol", ["http", "wire"])
@pytest.mark.parametrize("error", ["replica_corrupt", "node_failed"])
def test_a_read_refused_by_a_broken_replica_is_served_by_another(protocol: str, error: str) -> None:
    async def run() -> None:
        def behaviour(node: int, op: str, key: str) -> tuple[int, dict[str, Any]]:
            if node == 3:
                body = {"error": error, "message": f"node 3: {error}", "shard": SHARD}
                return 503, body
            return 200, _read(node, key)

        async with fake_cluster(behaviour) as cluster:
            async with Client([cluster.api[1]], protocol=protocol) as client:
                result = await client.get("k", consistency="eventual", replica=3)
            assert result.value == b"v"
            assert result.replica in (1, 2)
            assert cluster.seen[3].requests  # asked first, as requested

    asyncio.run(run())
