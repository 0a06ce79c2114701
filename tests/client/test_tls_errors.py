"""Each TLS and authentication failure the client can meet gives its named error, with
what failed in the message (issue 16): against a real HTTPS server on loopback whose
certificates come from shardset_proto.pki."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from tlskit import NOW, STORE, https_server, leaf, one_node_map, wire_server, write_pair

from shardset.client import Client
from shardset.clienttls import ClientTls
from shardset.tlserrors import (
    BadCredentials,
    CertificateExpired,
    Forbidden,
    MissingToken,
    NotTls,
    TokenRejected,
    UnknownCA,
    WrongHostName,
)
from shardset_proto import pki
from shardset_proto.identity import Identity
from shardset_proto.tlsfiles import TlsFiles

NODE = Identity.node(STORE, 1)


@pytest.fixture(scope="module")
def ca() -> pki.KeyPair:
    return pki.issue_ca(STORE, NOW)


@pytest.fixture
def ca_file(tmp_path: Path, ca: pki.KeyPair) -> Path:
    path = tmp_path / "ca.crt"
    path.write_bytes(ca.cert_pem)
    return path


async def _scan(port: int, tls: ClientTls) -> None:
    async with Client([f"https://127.0.0.1:{port}"], tls=tls, attempts=2) as client:
        await client.scan()


def serve_and_fetch(cert: tuple[Path, Path], tls: ClientTls, **answer: object) -> None:
    async def go() -> None:
        async with https_server(*cert, **answer) as (port, _):
            await _scan(port, tls)

    asyncio.run(go())


def test_a_server_certificate_of_another_ca_names_our_ca_file(
    tmp_path: Path, ca_file: Path
) -> None:
    other = pki.issue_ca("local.other", NOW)
    cert = write_pair(tmp_path, "node", leaf(other, Identity.node("local.other", 1)))
    with pytest.raises(UnknownCA) as err:
        serve_and_fetch(cert, ClientTls(cafile=ca_file))
    assert str(ca_file) in str(err.value)
    assert "local.other" in str(err.value)  # the issuer the node's certificate names
    assert err.value.exit_code == 2


def test_an_expired_server_certificate_names_the_server_and_the_date(
    tmp_path: Path, ca: pki.KeyPair, ca_file: Path
) -> None:
    then = NOW - dt.timedelta(days=30)
    old = leaf(ca, NODE, now=then, days=10)
    cert = write_pair(tmp_path, "node", old)
    with pytest.raises(CertificateExpired) as err:
        serve_and_fetch(cert, ClientTls(cafile=ca_file))
    message = str(err.value)
    assert "certificate of the node at https://127.0.0.1:" in message
    assert pki.info_pem(old.cert_pem).not_after.strftime("%Y-%m-%d") in message
    assert not err.value.ours


def test_our_own_expired_certificate_is_named_before_any_connection(
    tmp_path: Path, ca: pki.KeyPair, ca_file: Path
) -> None:
    then = NOW - dt.timedelta(days=30)
    old = leaf(ca, Identity.user(STORE, "alice"), now=then, days=10)
    cert, key = write_pair(tmp_path, "alice", old)
    with pytest.raises(CertificateExpired) as err:
        Client(["https://127.0.0.1:1"], tls=ClientTls(cafile=ca_file, cert=cert, key=key))
    assert "your client certificate" in str(err.value)
    assert str(cert) in str(err.value)
    assert pki.info_pem(old.cert_pem).not_after.strftime("%Y-%m-%d") in str(err.value)
    assert err.value.ours and err.value.exit_code == 2


def test_a_wrong_host_name_names_the_host_and_the_certificates_names(
    tmp_path: Path, ca: pki.KeyPair, ca_file: Path
) -> None:
    cert = write_pair(tmp_path, "node", leaf(ca, NODE, dns=("node-1.example",), ips=()))
    with pytest.raises(WrongHostName) as err:
        serve_and_fetch(cert, ClientTls(cafile=ca_file))
    assert "'127.0.0.1'" in str(err.value)
    assert "DNS:node-1.example" in str(err.value)


def test_a_401_without_credentials_is_a_missing_token(
    tmp_path: Path, ca: pki.KeyPair, ca_file: Path
) -> None:
    cert = write_pair(tmp_path, "node", leaf(ca, NODE))
    body = {"error": "unauthenticated", "message": "no token and no client certificate"}
    with pytest.raises(MissingToken) as err:
        serve_and_fetch(cert, ClientTls(cafile=ca_file), status=401, body=body)
    assert "--token" in str(err.value)
    assert "no token and no client certificate" in str(err.value)


def test_a_401_with_a_token_is_a_rejected_token_and_the_token_was_sent(
    tmp_path: Path, ca: pki.KeyPair, ca_file: Path
) -> None:
    cert = write_pair(tmp_path, "node", leaf(ca, NODE))
    body = {"error": "unauthenticated", "message": "unknown or revoked token"}

    async def go() -> list[dict[str, str]]:
        async with https_server(*cert, status=401, body=body) as (port, seen):
            tls = ClientTls(cafile=ca_file, token="sst_secret")
            async with Client([f"https://127.0.0.1:{port}"], tls=tls, attempts=2) as client:
                with pytest.raises(TokenRejected) as err:
                    await client.scan()
            assert "revoked" in str(err.value)
            return seen

    seen = asyncio.run(go())
    assert seen == [{"authorization": "Bearer sst_secret"}]


def test_a_403_names_the_role_and_the_action(
    tmp_path: Path, ca: pki.KeyPair, ca_file: Path
) -> None:
    cert = write_pair(tmp_path, "node", leaf(ca, NODE))
    body = {
        "error": "forbidden",
        "message": "role read may not kv.write",
        "role": "read",
        "action": "kv.write",
        "key": "k",
    }
    with pytest.raises(Forbidden) as err:
        serve_and_fetch(cert, ClientTls(cafile=ca_file, token="sst_x"), status=403, body=body)
    assert "'read'" in str(err.value) and "'kv.write'" in str(err.value)
    assert err.value.exit_code == 1


def test_a_node_that_does_not_speak_tls_is_named(ca_file: Path) -> None:
    async def go() -> None:
        server = await asyncio.start_server(_plain_http, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            tls = ClientTls(cafile=ca_file)
            async with Client([f"https://127.0.0.1:{port}"], tls=tls, attempts=2) as client:
                await client.scan()

    with pytest.raises(NotTls):
        asyncio.run(go())


async def _plain_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1024)
    writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
    await writer.drain()
    writer.close()


def test_a_missing_ca_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(BadCredentials) as err:
        Client(["https://127.0.0.1:1"], tls=ClientTls(cafile=tmp_path / "nope.crt"))
    assert "nope.crt" in str(err.value)


def wire_put(cert: tuple[Path, Path], tls: ClientTls, auth_status: int) -> list[list[Any]]:
    """A put over the wire protocol to a TLS wire server the map names; its requests."""

    async def go() -> list[list[Any]]:
        shardmap: dict[str, Any] = {}  # filled once both ports are known
        async with (
            wire_server(*cert, auth_status=auth_status) as (wport, seen),
            https_server(*cert, body=shardmap) as (port, _),
        ):
            shardmap.update(one_node_map(port, wport))
            endpoints = [f"https://127.0.0.1:{port}"]
            async with Client(endpoints, tls=tls, attempts=2, protocol="wire") as client:
                await client.put("k", b"v")
        return seen

    return asyncio.run(go())


def test_the_wire_protocol_speaks_tls_and_authenticates_with_the_token_first(
    tmp_path: Path, ca: pki.KeyPair, ca_file: Path
) -> None:
    cert = write_pair(tmp_path, "node", leaf(ca, NODE))
    seen = wire_put(cert, ClientTls(cafile=ca_file, token="sst_t"), 200)
    assert seen[0][1:] == ["auth", "sst_t"]
    assert seen[1][1] == "put"


def test_a_token_the_wire_protocol_refuses_is_named(
    tmp_path: Path, ca: pki.KeyPair, ca_file: Path
) -> None:
    cert = write_pair(tmp_path, "node", leaf(ca, NODE))
    with pytest.raises(TokenRejected) as err:
        wire_put(cert, ClientTls(cafile=ca_file, token="sst_gone"), 401)
    assert "wire auth" in str(err.value) and "unknown token" in str(err.value)


def test_a_secret_directory_gives_the_ca_the_certificate_and_the_token(
    tmp_path: Path, ca: pki.KeyPair
) -> None:
    pair = leaf(ca, Identity.user(STORE, "app"))
    TlsFiles(tmp_path).write(ca.cert_pem, pair.cert_pem, pair.key_pem)
    (tmp_path / "token").write_text("sst_abc\n")
    tls = ClientTls.from_dir(tmp_path)
    assert (tls.cafile, tls.cert, tls.key, tls.token) == (
        tmp_path / "ca.crt",
        tmp_path / "tls.crt",
        tmp_path / "tls.key",
        "sst_abc",
    )
    tls.context()  # loads
    with pytest.raises(BadCredentials, match=r"ca\.crt"):
        ClientTls.from_dir(tmp_path / "nothing")
