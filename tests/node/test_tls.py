"""NodeTls: what a node accepts as its own TLS material, whom it accepts as a peer, and
live reloads (a good one is used by the next handshake, a broken one keeps the old).

Certificates are issued with shardset_proto.pki into tmp dirs; handshakes run over real
loopback sockets. No timing: reloads are driven by calling `reload()`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import ssl
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from shardset_node.tls import NodeTls, PeerRefused, TlsConfigError
from shardset_proto import pki
from shardset_proto.identity import Identity
from shardset_proto.tlsfiles import TlsFiles

STORE = "ns.store"
NOW = dt.datetime.now(dt.UTC)


def write_node_dir(
    path: Path,
    ca: pki.KeyPair,
    leaf: pki.KeyPair,
    *,
    node_file: int | None = None,
    bundle: bytes | None = None,
) -> Path:
    """A node's TLS directory: ca.crt plus tls.crt/.key, or node-<id>.crt/.key."""
    files = TlsFiles(path)
    if node_file is None:
        files.write(bundle or ca.cert_pem, leaf.cert_pem, leaf.key_pem)
    else:
        files.write(bundle or ca.cert_pem, None, None)
        (path / f"node-{node_file}.key").write_bytes(leaf.key_pem)
        (path / f"node-{node_file}.crt").write_bytes(leaf.cert_pem)
    return path


def node_cert(ca: pki.KeyPair, node: int, store: str = STORE, **kw: Any) -> pki.KeyPair:
    return pki.issue_leaf(ca, Identity.node(store, node), kw.pop("now", NOW), **kw)


@pytest.fixture(scope="module")
def ca() -> pki.KeyPair:
    return pki.issue_ca(STORE, NOW)


def bump(path: Path) -> None:
    """Make sure the stamp changes even on a file system with coarse mtimes."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


# --- loading ---------------------------------------------------------------------------
def test_a_node_loads_its_own_certificate_and_reports_it(tmp_path: Path, ca: pki.KeyPair) -> None:
    leaf = node_cert(ca, 2)
    tls = NodeTls(write_node_dir(tmp_path, ca, leaf), STORE, 2)
    view = tls.report()
    info = pki.info_pem(leaf.cert_pem)
    assert view.identity == "shardset://ns.store/node/2"
    assert view.cert_serial == f"{info.serial:x}"
    assert view.cert_fingerprint == info.fingerprint
    assert view.ca_fingerprints == [pki.info_pem(ca.cert_pem).fingerprint]
    assert view.cert_not_after == info.not_after.timestamp()


def test_node_id_files_win_over_tls_crt(tmp_path: Path, ca: pki.KeyPair) -> None:
    write_node_dir(tmp_path, ca, node_cert(ca, 1))  # tls.crt of another node
    write_node_dir(tmp_path, ca, node_cert(ca, 3), node_file=3)
    assert NodeTls(tmp_path, STORE, 3).report().identity.endswith("/node/3")


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("other_store", "issued for store other.store"),
        ("other_id", "names shardset://ns.store/node/5"),
        ("expired", "expired"),
        ("key_mismatch", "key mismatch"),
        ("other_ca", "not issued by a CA"),
        ("user_cert", "names shardset://ns.store/user/alice"),
    ],
)
def test_a_node_refuses_to_start_with_material_not_its_own(
    tmp_path: Path, ca: pki.KeyPair, case: str, words: str
) -> None:
    leaf = {
        "other_store": lambda: node_cert(ca, 2, store="other.store"),
        "other_id": lambda: node_cert(ca, 5),
        "expired": lambda: node_cert(ca, 2, now=NOW - dt.timedelta(days=10), days=1),
        "key_mismatch": lambda: pki.KeyPair(node_cert(ca, 2).cert_pem, node_cert(ca, 2).key_pem),
        "other_ca": lambda: node_cert(pki.issue_ca(STORE, NOW), 2),
        "user_cert": lambda: pki.issue_leaf(ca, Identity.user(STORE, "alice"), NOW),
    }[case]()
    with pytest.raises(TlsConfigError, match=words):
        NodeTls(write_node_dir(tmp_path, ca, leaf), STORE, 2)


def test_a_missing_file_is_named(tmp_path: Path, ca: pki.KeyPair) -> None:
    TlsFiles(tmp_path).write(ca.cert_pem, None, None)
    with pytest.raises(TlsConfigError, match=r"tls\.crt does not exist"):
        NodeTls(tmp_path, STORE, 1)


# --- verifying peers --------------------------------------------------------------------
def der(pair: pki.KeyPair) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return pki.load_certs(pair.cert_pem)[0].public_bytes(serialization.Encoding.DER)


def test_verify_names_the_reason(tmp_path: Path, ca: pki.KeyPair) -> None:
    tls = NodeTls(write_node_dir(tmp_path, ca, node_cert(ca, 1)), STORE, 1)
    assert tls.verify_der(der(node_cert(ca, 2))) == Identity.node(STORE, 2)
    cases = {
        "other_store": node_cert(ca, 2, store="other.store"),
        "untrusted_ca": node_cert(pki.issue_ca(STORE, NOW), 2),
    }
    for reason, pair in cases.items():
        with pytest.raises(PeerRefused) as err:
            tls.verify_der(der(pair))
        assert err.value.reason == reason, err.value
    with pytest.raises(PeerRefused) as err:
        tls.verify(None)
    assert err.value.reason == "no_certificate"


# --- handshakes and reloads --------------------------------------------------------------
def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 60))


async def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> tuple[str, int]:
    """Dial a listener that uses `server_ctx`: the serial (hex) the server presented and
    whether the client's certificate verified on the server (1) or not (0)."""
    seen: list[int] = []

    async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        seen.append(1 if w.get_extra_info("peercert") else 0)
        w.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
        obj = w.get_extra_info("ssl_object")
        serial = f"{pki.info(pki.load_certs(_pem(obj))[0]).serial:x}"
        await r.read()
        w.close()
    finally:
        server.close()
        await server.wait_closed()
    return serial, seen[0] if seen else 0


def _pem(obj: ssl.SSLObject) -> bytes:
    return ssl.DER_cert_to_PEM_cert(obj.getpeercert(binary_form=True)).encode()


def test_a_listener_serves_the_reloaded_certificate(tmp_path: Path, ca: pki.KeyPair) -> None:
    first, second = node_cert(ca, 1), node_cert(ca, 1)
    server = NodeTls(write_node_dir(tmp_path / "a", ca, first), STORE, 1)
    client = NodeTls(write_node_dir(tmp_path / "b", ca, node_cert(ca, 2)), STORE, 2)

    async def test() -> None:
        ctx = server.server_context(require_client_cert=True)  # given to the server once
        serial, verified = await handshake(ctx, client.client_context())
        assert (serial, verified) == (f"{pki.info_pem(first.cert_pem).serial:x}", 1)
        write_node_dir(tmp_path / "a", ca, second)
        with capture_logs() as logs:
            assert server.reload()
        assert [e["event"] for e in logs] == ["tls_reloaded"]
        serial, _ = await handshake(ctx, client.client_context())
        assert serial == f"{pki.info_pem(second.cert_pem).serial:x}"
        assert server.report().cert_serial == serial

    run(test)


def test_a_broken_reload_keeps_the_old_material(tmp_path: Path, ca: pki.KeyPair) -> None:
    leaf = node_cert(ca, 1)
    tls = NodeTls(write_node_dir(tmp_path, ca, leaf), STORE, 1)
    (tmp_path / "tls.crt").write_bytes(b"-----BEGIN CERTIFICATE-----\nhalf")
    bump(tmp_path / "tls.crt")
    with capture_logs() as logs:
        assert not tls.reload()
        assert not tls.reload()  # unchanged broken files: not retried, not logged again
    assert [e["event"] for e in logs] == ["tls_reload_failed"]
    assert "tls.crt" in logs[0]["reason"]
    assert tls.report().cert_serial == f"{pki.info_pem(leaf.cert_pem).serial:x}"
    assert tls.stats.reload_failures == 1

    async def test() -> None:  # and it still serves
        other = NodeTls(write_node_dir(tmp_path / "b", ca, node_cert(ca, 2)), STORE, 2)
        serial, _ = await handshake(
            tls.server_context(require_client_cert=True), other.client_context()
        )
        assert serial == tls.report().cert_serial

    run(test)


def test_a_ca_dropped_from_the_bundle_is_no_longer_trusted(tmp_path: Path) -> None:
    old, new = pki.issue_ca(STORE, NOW), pki.issue_ca(STORE, NOW)
    both = old.cert_pem + new.cert_pem
    tls = NodeTls(write_node_dir(tmp_path, new, node_cert(new, 1), bundle=both), STORE, 1)
    peer_on_old = der(node_cert(old, 2))
    assert tls.verify_der(peer_on_old).node_id == 2
    write_node_dir(tmp_path, new, node_cert(new, 1))  # rotation done: new CA only
    assert tls.reload()
    with pytest.raises(PeerRefused) as err:
        tls.verify_der(peer_on_old)
    assert err.value.reason == "untrusted_ca"
    assert len(tls.report().ca_fingerprints) == 1
