"""PeerClient with TLS (issue 16): node-to-node admin calls go to the target's admin URL
over HTTPS presenting this node's certificate, and an answer is taken only from the
node that was called. Real HTTPS servers on loopback; certificates from shardset_proto.pki.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest
from aiohttp import web

from shardset_node.peers.client import PeerClient
from shardset_node.tls import NodeTls
from shardset_proto import pki
from shardset_proto.admin import ReadIndex
from shardset_proto.errors import ApiError
from shardset_proto.identity import Identity
from shardset_proto.shardmap import NodeAddress, bootstrap_map
from shardset_proto.tlsfiles import TlsFiles

STORE = "ns.store"
NOW = dt.datetime.now(dt.UTC)


def node_tls(tmp: Path, ca: pki.KeyPair, node_id: int) -> NodeTls:
    pair = pki.issue_leaf(ca, Identity.node(STORE, node_id), NOW)
    files = TlsFiles(tmp / f"node{node_id}-{pki.info_pem(pair.cert_pem).serial:x}")
    files.write(ca.cert_pem, pair.cert_pem, pair.key_pem)
    return NodeTls(files.directory, STORE, node_id)


async def call_over_https(
    client_tls: NodeTls, server_tls: NodeTls, seen: list[str]
) -> dict[str, object]:
    async def handler(request: web.Request) -> web.StreamResponse:
        # The admin server's view: who called (the client certificate it verified).
        seen.append(server_tls.verify(request.transport.get_extra_info("ssl_object")).uri)  # type: ignore[union-attr]
        return web.json_response({"index": 7, "path": request.path})

    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    ctx = server_tls.server_context(require_client_cert=True)
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx).start()
    port = runner.addresses[0][1]
    nodes = {
        1: NodeAddress("127.0.0.1:1", "https://127.0.0.1:1"),
        # The API URL is a decoy: with TLS admin calls go to the admin port.
        2: NodeAddress("127.0.0.1:2", "https://127.0.0.1:9", f"https://127.0.0.1:{port}"),
    }
    peers = PeerClient(1, lambda: bootstrap_map(nodes, 1, 2), tls=client_tls)
    try:
        return await asyncio.wait_for(peers.call(2, ReadIndex(shard=1), timeout=10), 20)
    finally:
        await peers.close()
        await runner.cleanup()


def test_an_admin_call_goes_to_the_admin_port_with_the_node_certificate(tmp_path: Path) -> None:
    ca = pki.issue_ca(STORE, NOW)
    seen: list[str] = []
    answer = asyncio.run(
        call_over_https(node_tls(tmp_path, ca, 1), node_tls(tmp_path, ca, 2), seen)
    )
    assert answer["index"] == 7 and answer["path"] == "/v1/admin/read-index"
    assert seen == ["shardset://ns.store/node/1"]


def test_an_answer_from_another_node_than_the_one_called_is_refused(tmp_path: Path) -> None:
    ca = pki.issue_ca(STORE, NOW)
    seen: list[str] = []
    with pytest.raises(ApiError) as err:
        asyncio.run(call_over_https(node_tls(tmp_path, ca, 1), node_tls(tmp_path, ca, 3), seen))
    assert err.value.status == 502 and "names node 3" in str(err.value)
    assert err.value.code == "peer_refused"
    assert seen == []  # checked before the request was sent


def test_a_server_of_an_unknown_ca_is_unreachable_not_trusted(tmp_path: Path) -> None:
    ca, other = pki.issue_ca(STORE, NOW), pki.issue_ca(STORE, NOW)
    with pytest.raises(ApiError) as err:
        asyncio.run(call_over_https(node_tls(tmp_path, ca, 1), node_tls(tmp_path, other, 2), []))
    assert err.value.status == 503 and "certificate" in str(err.value).lower()
