"""The operator's HTTP calls to nodes, against a real aiohttp server standing in for one."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from shardset_operator.clients import nodeclient
from shardset_operator.clients.nodeclient import ClientTls, NodeCallError, NodeClient
from shardset_proto import pki
from shardset_proto.admin import SetConsistency, TransferLeader
from shardset_proto.identity import Identity
from shardset_proto.status import ConsistencyView, NodeStatus
from shardset_proto.tlsfiles import TlsFiles, server_context


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


# --- Mutual TLS (issue 16) --------------------------------------------------------------
STORE = "prod.kv"


def _pki(dns: tuple[str, ...] = ("localhost",)) -> tuple[pki.KeyPair, pki.KeyPair, pki.KeyPair]:
    now = datetime.now(UTC)
    ca = pki.issue_ca(STORE, now)
    node = pki.issue_leaf(ca, Identity.node(STORE, 1), now, dns=dns, ips=("127.0.0.1",))
    return ca, node, pki.issue_leaf(ca, Identity.operator(STORE), now)


def _serve_tls(
    ca: pki.KeyPair, node: pki.KeyPair, tls: ClientTls, tmp: Path
) -> tuple[NodeStatus | NodeCallError, list[str]]:
    """A node's HTTPS API requiring a client certificate; what the client got, and the
    identities the server saw."""
    TlsFiles(tmp).write(ca.cert_pem, node.cert_pem, node.key_pem)
    server_ssl = server_context(TlsFiles(tmp), require_client_cert=True)
    seen: list[str] = []

    async def status(request: web.Request) -> web.Response:
        der = request.transport.get_extra_info("ssl_object").getpeercert(True)  # type: ignore[union-attr]
        seen.append(pki.peer_identity(der, STORE).uri)
        return web.json_response({"node": 1, "groups": {}})

    async def main() -> NodeStatus | NodeCallError:
        app = web.Application()
        app.router.add_get("/v1/status", status)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ssl)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as session:
                client = NodeClient(session).for_store(STORE, tls)
                try:
                    return await client.status(f"https://localhost:{port}")
                except NodeCallError as e:
                    return e
        finally:
            await runner.cleanup()

    return asyncio.run(main()), seen


def test_the_operator_calls_a_tls_node_with_its_certificate(tmp_path: Path) -> None:
    ca, node, op = _pki()
    got, seen = _serve_tls(ca, node, ClientTls(ca.cert_pem, op.cert_pem, op.key_pem), tmp_path)
    assert isinstance(got, NodeStatus) and got.node == 1
    assert seen == [Identity.operator(STORE).uri]


def test_a_node_certificate_of_another_ca_is_refused(tmp_path: Path) -> None:
    ca, node, op = _pki()
    other, _, _ = _pki()
    got, seen = _serve_tls(ca, node, ClientTls(other.cert_pem, op.cert_pem, op.key_pem), tmp_path)
    assert isinstance(got, NodeCallError) and "certificate verify failed" in str(got)
    assert seen == []


def test_a_node_certificate_for_another_host_name_is_refused(tmp_path: Path) -> None:
    ca, node, op = _pki(dns=("kv-0.kv-peers.prod.svc",))
    got, seen = _serve_tls(ca, node, ClientTls(ca.cert_pem, op.cert_pem, op.key_pem), tmp_path)
    assert isinstance(got, NodeCallError) and "localhost" in str(got)
    assert seen == []


def test_the_ssl_context_is_rebuilt_only_when_the_certificates_change() -> None:
    ca, _, op = _pki()
    _, _, renewed = _pki()

    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            root = NodeClient(session)
            first = root.for_store(STORE, ClientTls(ca.cert_pem, op.cert_pem, op.key_pem))
            same = root.for_store(STORE, ClientTls(ca.cert_pem, op.cert_pem, op.key_pem))
            assert same.tls is first.tls is not None
            other = root.for_store(STORE, ClientTls(ca.cert_pem, renewed.cert_pem, renewed.key_pem))
            assert other.tls is not first.tls
            assert root.for_store(STORE, None).tls is None

    asyncio.run(main())
