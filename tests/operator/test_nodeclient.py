"""The operator's HTTP calls to nodes, against a real aiohttp server standing in for one."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from shardset_operator.clients import nodeclient
from shardset_operator.clients.nodeclient import NodeCallError, NodeClient
from shardset_proto.admin import SetConsistency, TransferLeader
from shardset_proto.status import ConsistencyView


def _serve(
    routes: Callable[[web.Application], None], body: Callable[[NodeClient, str], Awaitable[Any]]
) -> Any:
    async def main() -> Any:
        app = web.Application()
        routes(app)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as session:
                return await body(NodeClient(session), f"http://127.0.0.1:{port}")
        finally:
            await runner.cleanup()

    return asyncio.run(main())


def test_status_and_consistency_switch() -> None:
    seen: list[dict[str, Any]] = []

    async def status(_: web.Request) -> web.Response:
        return web.json_response({"node": 1, "groups": {}, "consistency": {"mode": "lease"}})

    async def admin(request: web.Request) -> web.Response:
        seen.append(await request.json())
        return web.json_response({"mode": "bounded", "maxStalenessMs": 100})

    def routes(app: web.Application) -> None:
        app.router.add_get("/v1/status", status)
        app.router.add_post("/v1/admin/consistency", admin)

    async def body(client: NodeClient, url: str) -> Any:
        report = await client.status(url)
        await client.set_consistency(url, SetConsistency(mode="bounded", max_staleness_ms=100))
        return report

    assert _serve(routes, body).consistency == ConsistencyView(mode="lease")
    assert seen == [{"mode": "bounded", "maxStalenessMs": 100}]


def test_node_refusal_is_an_error_naming_the_call_and_the_reason() -> None:
    async def admin(_: web.Request) -> web.Response:
        return web.json_response(
            {"error": "unknown_action", "message": "unknown admin action 'consistency'"},
            status=404,
        )

    def routes(app: web.Application) -> None:
        app.router.add_post("/v1/admin/consistency", admin)

    async def body(client: NodeClient, url: str) -> Any:
        return await client.set_consistency(url, SetConsistency(mode="lease"))

    with pytest.raises(
        NodeCallError, match=r"POST .*/v1/admin/consistency: HTTP 404: unknown admin"
    ):
        _serve(routes, body)


def test_a_hung_node_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nodeclient, "STATUS_TIMEOUT_S", 0.2)

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({})

    def routes(app: web.Application) -> None:
        app.router.add_get("/v1/status", slow)

    async def body(client: NodeClient, url: str) -> Any:
        return await client.status(url)

    with pytest.raises(NodeCallError, match="Timeout"):
        _serve(routes, body)


def test_unreachable_node() -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            await NodeClient(session).status("http://127.0.0.1:9")

    with pytest.raises(NodeCallError, match=re.escape("GET http://127.0.0.1:9/v1/status")):
        asyncio.run(main())


def test_a_report_that_is_not_a_status_is_an_error() -> None:
    async def status(_: web.Request) -> web.Response:
        return web.json_response({"groups": {}})  # no node id

    def routes(app: web.Application) -> None:
        app.router.add_get("/v1/status", status)

    async def body(client: NodeClient, url: str) -> Any:
        return await client.status(url)

    with pytest.raises(NodeCallError, match=r"GET .*/v1/status: not a NodeStatus"):
        _serve(routes, body)


def test_an_admin_body_goes_to_its_action_and_follows_one_redirect() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    async def admin(request: web.Request) -> web.Response:
        seen.append((request.path, await request.json()))
        if len(seen) == 1:
            leader = f"http://{request.host}"
            return web.json_response({"error": "not_leader", "leader_url": leader}, status=307)
        return web.json_response({})

    def routes(app: web.Application) -> None:
        app.router.add_post("/v1/admin/{action}", admin)

    async def body(client: NodeClient, url: str) -> Any:
        return await client.admin(url, TransferLeader(shard=2, to=3))

    assert _serve(routes, body) == {}
    assert seen == [("/v1/admin/transfer-leader", {"shard": 2, "to": 3})] * 2
