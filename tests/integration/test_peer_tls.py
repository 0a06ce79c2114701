"""Mutual TLS between real node processes (issue 16).

- Issue 16's attack reproduced: one forged, well-formed APPEND sent to a follower over
  an unauthenticated connection. On an insecure node (no --tls-dir) it IS applied (the
  documented insecure behaviour); on a TLS node the connection is refused before any
  frame is read, whatever the intruder presents (no TLS, another store's certificate, a
  self-signed one, an expired one, a real node's claiming another id, none, a user's,
  the operator's): counted per reason, logged with the reason, the remote address and
  the identity claimed, and the follower's term, commit and data unchanged.
- A TLS directory updated with a broken certificate keeps the old one in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tlscluster import LOCAL, NOW, STORE, TlsCluster, write_atomic

from shardset_proto import pki
from shardset_proto.commands import Put, encode_command
from shardset_proto.framing import PEER_MAGIC, frame, hello
from shardset_proto.identity import Identity
from shardset_proto.peer import encode_batch
from shardset_proto.slots import slot_of
from shardset_proto.status import ShardMapView
from shardset_raft.types import Entry, Message, MessageType

PEER_PROTOCOL = 1  # shardset_node.peers.transport.PROTOCOL_VERSION


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsCluster]:
    cluster = TlsCluster(tmp_path_factory.mktemp("tls-cluster"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 180))


# --- the attack ---------------------------------------------------------------------------
async def target(cluster: TlsCluster, http: aiohttp.ClientSession) -> dict[str, Any]:
    """A shard, its leader, one follower, the follower's view of the group, and a key of
    that shard nobody wrote."""
    leaders = await cluster.wait_ready(http)
    shard, leader = sorted(leaders.items())[0]
    follower = next(n for n in cluster.ports if n != leader)
    async with http.get(cluster.api(follower) + "/v1/shardmap") as r:
        smap = ShardMapView.model_validate(await r.json()).shard_map()
    key = next(
        k for k in (f"forged-{i}" for i in range(10_000))
        if smap.shard_of_slot(slot_of(k.encode())) == shard
    )  # fmt: skip
    group = (await cluster.status(http, follower))["groups"][str(shard)]
    return {"shard": shard, "leader": leader, "follower": follower, "key": key, "group": group}


def forged_append(t: dict[str, Any]) -> bytes:
    """What the leader would send to append and commit one Put the leader never saw."""
    g = t["group"]
    term, last = g["term"], g["last_index"]
    entry = Entry(term=term, index=last + 1, data=encode_command(Put(t["key"].encode(), b"forged")))
    m = Message(
        MessageType.APPEND, to=t["follower"], frm=t["leader"], term=term,
        log_term=term, index=last, entries=(entry,), commit=last + 1,
    )  # fmt: skip
    return hello(PEER_MAGIC, PEER_PROTOCOL, t["leader"]) + frame(encode_batch([(t["shard"], m)]))


async def send_raw(port: int, data: bytes, ctx: ssl.SSLContext | None) -> None:
    """Connect (TLS with `ctx`, else plain TCP), send `data`, read until the node closes."""
    try:
        reader, writer = await asyncio.open_connection(LOCAL, port, ssl=ctx)
    except (ssl.SSLError, OSError):
        return
    with contextlib.suppress(ssl.SSLError, OSError):
        writer.write(data)
        await writer.drain()
        await asyncio.wait_for(reader.read(), 10)
    writer.close()
    with contextlib.suppress(ssl.SSLError, OSError):
        await writer.wait_closed()


async def read_on(cluster: TlsCluster, http: aiohttp.ClientSession, node: int, key: str) -> int:
    async with http.get(cluster.api(node) + f"/v1/kv/{key}?consistency=eventual") as r:
        return r.status


def test_insecure_nodes_apply_a_forged_append(tmp_path: Path) -> None:
    """The documented insecure behaviour (what --tls-dir closes): whoever reaches the
    peer port is taken for the node its hello names."""
    cluster = TlsCluster(tmp_path, tls=False)
    cluster.start()

    async def body() -> None:
        async with cluster.session() as http:
            t = await target(cluster, http)
            await send_raw(cluster.ports[t["follower"]].peer, forged_append(t), None)

            async def applied() -> bool:
                return await read_on(cluster, http, t["follower"], t["key"]) == 200

            await cluster.wait(applied, "the forged write applied on the follower")
        for node in cluster.ports:  # and each node said what is off
            (warning,) = cluster.log_events(node, "insecure_mode")
            assert "peer authentication" in warning["off"]

    try:
        run(body())
    finally:
        cluster.stop()


def intruders(cluster: TlsCluster, leader: int) -> dict[str, tuple[pki.KeyPair | None, str]]:
    """name -> (the certificate presented, the reason the node must give)."""
    ca, me = cluster.ca, Identity.node(STORE, leader)
    other_node = next(n for n in cluster.ports if n != leader)
    elsewhere = Identity.node("other.store", leader)
    return {
        "other_store": (pki.issue_leaf(ca, elsewhere, NOW), "other_store"),
        "self_signed": (pki.issue_ca(STORE, NOW), "self_signed"),
        "unknown_ca": (pki.issue_leaf(pki.issue_ca(STORE, NOW), me, NOW), "unknown_ca"),
        "expired": (
            pki.issue_leaf(ca, me, NOW - dt.timedelta(days=9), days=1),
            "expired",
        ),
        # A real node's own certificate, its hello claiming to be the leader.
        "claims_other_id": (cluster.issue_node(other_node), "id_mismatch"),
        "no_certificate": (None, "no_certificate"),
        "user": (pki.issue_leaf(ca, Identity.user(STORE, "alice"), NOW), "not_a_node"),
        "operator": (pki.issue_leaf(ca, Identity.operator(STORE), NOW), "not_a_node"),
    }  # fmt: skip


def intruder_ctx(pair: pki.KeyPair | None, where: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the node's refusal is under test, not the intruder's
    if pair is not None:
        where.mkdir(parents=True, exist_ok=True)
        (where / "c.crt").write_bytes(pair.cert_pem)
        (where / "c.key").write_bytes(pair.key_pem)
        ctx.load_cert_chain(where / "c.crt", where / "c.key")
    return ctx


async def refused_counts(
    cluster: TlsCluster, http: aiohttp.ClientSession, node: int
) -> dict[str, float]:
    async with http.get(cluster.api(node) + "/metrics") as r:
        text = await r.text()
    out = {}
    for line in text.splitlines():
        if line.startswith("shardset_peer_handshakes_refused_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            out[reason] = float(line.rsplit(" ", 1)[1])
    return out


def test_intruders_are_refused_on_the_peer_port_and_change_nothing(
    tls_cluster: TlsCluster, tmp_path: Path
) -> None:
    cluster = tls_cluster

    async def body() -> None:
        async with cluster.session() as http:
            t = await target(cluster, http)
            follower, port = t["follower"], cluster.ports[t["follower"]].peer
            attack = forged_append(t)
            expected = {"not_tls": 1.0}
            await send_raw(port, attack, None)  # no TLS at all
            for name, (pair, reason) in intruders(cluster, t["leader"]).items():
                await send_raw(port, attack, intruder_ctx(pair, tmp_path / name))
                expected[reason] = expected.get(reason, 0.0) + 1

            async def all_counted() -> bool:
                return await refused_counts(cluster, http, follower) == expected

            await cluster.wait(all_counted, f"refusals {expected}", timeout=30)
            after = (await cluster.status(http, follower))["groups"][str(t["shard"])]
            before = t["group"]
            assert (after["term"], after["commit"], after["last_index"]) == (
                before["term"], before["commit"], before["last_index"],
            )  # fmt: skip
            for node in cluster.ports:
                assert await read_on(cluster, http, node, t["key"]) == 404
            logged = cluster.log_events(follower, "peer_refused")
            assert {e["reason"] for e in logged} == set(expected)
            for e in logged:
                assert e["side"] == "acceptor" and e["remote"].startswith(f"{LOCAL}:")
            mismatch = next(e for e in logged if e["reason"] == "id_mismatch")
            assert mismatch["claimed"] == f"node {t['leader']}"
            other = next(e for e in logged if e["reason"] == "other_store")
            assert "other.store" in other["claimed"]

    run(body())


def test_a_broken_certificate_file_keeps_the_old_certificate(
    tls_cluster: TlsCluster,
) -> None:
    cluster = tls_cluster
    node = 3
    cert = cluster.tls_dir(node) / f"node-{node}.crt"

    async def body() -> None:
        async with cluster.session() as http:
            await cluster.wait_ready(http)
            before = (await cluster.status(http, node))["tls"]
            write_atomic(cert, b"-----BEGIN CERTIFICATE-----\nMIIB half written")

            async def failed() -> bool:
                return bool(cluster.log_events(node, "tls_reload_failed"))

            await cluster.wait(failed, "tls_reload_failed")
            reason = cluster.log_events(node, "tls_reload_failed")[-1]["reason"]
            assert f"node-{node}.crt" in reason
            async with http.get(cluster.api(node) + "/metrics") as r:
                assert "shardset_tls_reload_failures_total 1.0" in await r.text()
        # A new connection (new session) still handshakes, with the old certificate.
        async with cluster.session() as http:
            assert (await cluster.status(http, node))["tls"]["certSerial"] == before["certSerial"]
            # And the node still takes part: a write through it succeeds.
            async with http.put(cluster.api(node) + "/v1/kv/after-broken", data=b"v") as r:
                assert r.status == 200, await r.text()
            fixed = cluster.issue_node(node)
            cluster.write_node_files(node, fixed)
            serial = f"{pki.info_pem(fixed.cert_pem).serial:x}"

            async def reloaded() -> bool:
                return (await cluster.status(http, node))["tls"]["certSerial"] == serial

            await cluster.wait(reloaded, "the fixed certificate in use")

    run(body())


def test_admin_actions_are_on_the_admin_port_with_a_client_certificate_only(
    tls_cluster: TlsCluster,
) -> None:
    """--admin: admin actions are served there (HTTPS, client certificate required),
    not on the API port; a caller without a certificate does not get past the handshake."""
    cluster = tls_cluster
    ports = cluster.ports[1]
    body = {"mode": "linearizable"}

    async def body_() -> None:
        async with cluster.session() as http:  # the operator's certificate
            await cluster.wait_ready(http)
            admin = f"https://{LOCAL}:{ports.admin}/v1/admin/consistency"
            async with http.post(admin, json=body) as r:
                assert r.status == 200, await r.text()
            async with http.post(cluster.api(1) + "/v1/admin/consistency", json=body) as r:
                assert r.status == 404, await r.text()
        anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        anonymous.check_hostname = False
        anonymous.verify_mode = ssl.CERT_NONE
        async with aiohttp.ClientSession() as http:
            with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
                async with http.post(admin, json=body, ssl=anonymous) as r:
                    await r.read()

    run(body_())
