"""The store's certificates and identities (shardset_proto.pki, identity, tlsfiles):
issuance, identity from a certificate, a real TLS 1.3 handshake between two of them."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shardset_proto import pki
from shardset_proto.identity import (
    Action,
    Identity,
    IdentityError,
    Kind,
    Role,
    allowed,
    identity_of,
    key_in_scope,
    parse_uri,
    range_in_scope,
    token_digest,
    token_matches,
)
from shardset_proto.tlsfiles import TlsFiles, TlsFilesError, client_context, server_context

NOW = dt.datetime(2026, 12, 3, tzinfo=dt.UTC)
STORE = "default.demo"


def test_identity_uris_round_trip() -> None:
    for ident in (
        Identity.node(STORE, 3),
        Identity.operator(STORE),
        Identity.user(STORE, "app-1"),
    ):
        assert parse_uri(ident.uri) == ident
    assert Identity.node(STORE, 3).uri == "shardset://default.demo/node/3"


@pytest.mark.parametrize(
    "uri",
    ["https://x/node/1", "shardset://default.demo/node/x", "shardset://default.demo/root",
     "shardset://Bad_Store/operator", "shardset://default.demo/user/UPPER"],
)
def test_malformed_identity_uris_are_refused(uri: str) -> None:
    with pytest.raises(IdentityError):
        parse_uri(uri)


def test_identity_of_refuses_other_store_and_none() -> None:
    with pytest.raises(IdentityError, match=r"issued for store other\.demo"):
        identity_of(["shardset://other.demo/node/1"], STORE)
    with pytest.raises(IdentityError, match="no shardset"):
        identity_of(["https://example.com"], STORE)
    assert identity_of(["https://x", "shardset://default.demo/node/2"], STORE).node_id == 2


def test_role_table() -> None:
    assert allowed(Role.READ, Action.KV_READ)
    assert not allowed(Role.READ, Action.KV_WRITE)
    assert allowed(Role.READWRITE, Action.KV_WRITE)
    assert not allowed(Role.READWRITE, Action.STORE_ADMIN)
    assert allowed(Role.ADMIN, Action.STORE_ADMIN)
    assert not allowed(Role.ADMIN, Action.PEER)
    assert not allowed(Kind.OPERATOR, Action.PEER)
    assert allowed(Kind.NODE, Action.PEER)


def test_prefix_scopes() -> None:
    assert key_in_scope((), "anything")
    assert key_in_scope(("app/",), "app/x")
    assert not key_in_scope(("app/",), "other")
    assert range_in_scope(("app/",), "app/", "app0")
    assert range_in_scope(("app/",), "app/a", "app/b")
    assert not range_in_scope(("app/",), "app/", None)
    assert not range_in_scope(("app/",), "a", "app/z")
    assert not range_in_scope(("app/",), "app/", "b")


def test_token_digest() -> None:
    assert token_matches("sst_abc", token_digest("sst_abc"))
    assert not token_matches("sst_abd", token_digest("sst_abc"))


def test_issued_leaf_names_its_identity_and_expiry() -> None:
    ca = pki.issue_ca(STORE, NOW)
    leaf = pki.issue_leaf(ca, Identity.node(STORE, 1), NOW, dns=("n1.demo",), ips=("127.0.0.1",))
    info = pki.info_pem(leaf.cert_pem)
    assert info.uris == ("shardset://default.demo/node/1",)
    assert info.not_after == NOW + dt.timedelta(days=pki.LEAF_DAYS)
    assert not info.due(NOW)
    assert info.due(NOW + dt.timedelta(days=61))
    der = pki.load_certs(leaf.cert_pem)[0].public_bytes(serialization.Encoding.DER)
    assert pki.peer_identity(der, STORE) == Identity.node(STORE, 1)
    other = pki.issue_ca("default.other", NOW)
    cert = pki.load_certs(leaf.cert_pem)[0]
    assert pki.issued_by(cert, pki.load_certs(ca.cert_pem))
    assert not pki.issued_by(cert, pki.load_certs(other.cert_pem))
    assert pki.info_pem(ca.cert_pem).is_ca


def test_bad_pem_is_named() -> None:
    with pytest.raises(pki.PkiError, match="does not parse"):
        pki.load_certs(b"not a certificate")
    with pytest.raises(TlsFilesError, match="does not exist"):
        server_context(TlsFiles(Path("/nonexistent")), require_client_cert=True)


def _material(tmp: Path, name: str, ca: pki.KeyPair, ident: Identity) -> TlsFiles:
    leaf = pki.issue_leaf(ca, ident, dt.datetime.now(dt.UTC), dns=("localhost",))
    files = TlsFiles(tmp / name)
    files.write(ca.cert_pem, leaf.cert_pem, leaf.key_pem)
    return files


def test_mutual_tls_handshake_gives_the_peer_identity(tmp_path: Path) -> None:
    ca = pki.issue_ca(STORE, dt.datetime.now(dt.UTC))
    server = _material(tmp_path, "server", ca, Identity.node(STORE, 1))
    client = _material(tmp_path, "client", ca, Identity.user(STORE, "app"))
    assert oct(client.key.stat().st_mode & 0o777) == "0o600"

    async def run() -> Identity:
        seen: asyncio.Future[Identity] = asyncio.get_running_loop().create_future()

        async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            obj = w.get_extra_info("ssl_object")
            seen.set_result(pki.peer_identity(obj.getpeercert(True), STORE))
            w.close()

        srv = await asyncio.start_server(
            on_conn, "127.0.0.1", 0, ssl=server_context(server, require_client_cert=True)
        )
        port = srv.sockets[0].getsockname()[1]
        _, w = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context(client), server_hostname="localhost"
        )
        ident = await asyncio.wait_for(seen, 5)
        w.close()
        srv.close()
        return ident

    assert asyncio.run(run()) == Identity.user(STORE, "app")


def test_a_client_of_another_ca_fails_the_handshake(tmp_path: Path) -> None:
    ca = pki.issue_ca(STORE, dt.datetime.now(dt.UTC))
    stranger = pki.issue_ca(STORE, dt.datetime.now(dt.UTC))
    server = _material(tmp_path, "server", ca, Identity.node(STORE, 1))
    client = _material(tmp_path, "client", stranger, Identity.node(STORE, 2))

    async def run() -> None:
        srv = await asyncio.start_server(
            lambda r, w: w.close(), "127.0.0.1", 0,
            ssl=server_context(server, require_client_cert=True),
        )
        port = srv.sockets[0].getsockname()[1]
        try:
            # The client does not trust the server's CA either: its own check fails.
            with pytest.raises(ssl.SSLCertVerificationError):
                await asyncio.open_connection(
                    "127.0.0.1", port, ssl=client_context(client), server_hostname="localhost"
                )
        finally:
            srv.close()

    asyncio.run(run())
    assert isinstance(pki.load_certs(ca.cert_pem)[0], x509.Certificate)
