"""The Python client against a TLS store as `shardset local up` starts it (the
`one_node_tls_store` fixture): every operation over HTTPS and over the TLS wire port
with user local-admin's token, and a client certificate of a user in place of a token."""

from __future__ import annotations

import asyncio

import pytest

from shardset.client import Client
from shardset.clienttls import ClientTls
from shardset.local import LocalCluster
from shardset.tlserrors import MissingToken
from shardset_proto.admin import PutUser
from shardset_proto.identity import Role


@pytest.mark.parametrize("protocol", ["http", "wire"])
def test_every_operation_with_the_token(one_node_tls_store: LocalCluster, protocol: str) -> None:
    cluster = one_node_tls_store

    async def go() -> None:
        tls = cluster.client_tls()
        async with Client(cluster.endpoints, tls=tls, protocol=protocol) as c:
            await c.put(f"{protocol}-a", b"1")
            assert (await c.get(f"{protocol}-a")).value == b"1"
            await c.cas(f"{protocol}-a", b"1", b"2")
            await c.delete(f"{protocol}-a")
            assert (await c.get(f"{protocol}-a")).value is None
            assert isinstance(await c.scan(), list)
            status = await c.status()
            assert all("error" not in v for v in status["nodes"].values()), status

    asyncio.run(go())


def test_a_user_certificate_stands_in_for_a_token(one_node_tls_store: LocalCluster) -> None:
    cluster = one_node_tls_store
    files = cluster.pki.user_files("app")
    cluster.on_meta_leader(PutUser(name="app", role=Role.READWRITE))

    async def go() -> None:
        tls = ClientTls(cafile=files.ca, cert=files.cert, key=files.key)
        for protocol in ("http", "wire"):
            async with Client(cluster.endpoints, tls=tls, protocol=protocol) as c:
                await c.put("cert-key", protocol.encode())
                assert (await c.get("cert-key")).value == protocol.encode()

    asyncio.run(go())


def test_the_ca_alone_is_a_missing_token(one_node_tls_store: LocalCluster) -> None:
    async def go() -> None:
        tls = ClientTls(cafile=one_node_tls_store.pki.ca_file)
        async with Client(one_node_tls_store.endpoints, tls=tls) as c:
            await c.get("k")

    with pytest.raises(MissingToken):
        asyncio.run(go())
