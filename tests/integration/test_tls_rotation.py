"""Certificates rotated under a running workload (issue 16), on real node processes:
first new leaves from the same CA, then a CA rotation (bundle old+new, leaves re-issued
by the new CA, the old CA dropped). No request fails, no node restarts, and every node
reports the new serials and CAs in its status. Once the old CA is dropped, a certificate
it issued is refused on the peer port and the API: no listener was restarted for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from tlscluster import LOCAL, NOW, STORE, TlsCluster

from shardset_proto import pki
from shardset_proto.framing import PEER_MAGIC, hello
from shardset_proto.identity import Identity
from shardset_proto.tlsfiles import TlsFiles, client_context


@dataclass
class Workload:
    """Writers PUTting through every node (307s followed to the leaders), each request
    with the client's CURRENT TLS context. A request fails unless it ends in a 200; a
    503 (no leader known: an election) is retried as the API asks, any TLS or
    connection error is a failure at once."""

    cluster: TlsCluster
    ctx: ssl.SSLContext
    ok: int = 0
    retried: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: bool = False

    async def run(self, writers: int = 3) -> None:
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(*(self._writer(http, w) for w in range(writers)))

    async def _writer(self, http: aiohttp.ClientSession, w: int) -> None:
        nodes = itertools.cycle(sorted(self.cluster.ports))
        for i in itertools.count():
            if self._stop:
                return
            url = self.cluster.api(next(nodes)) + f"/v1/kv/rot-{w}-{i % 50}"
            failure = await self._put(http, url, str(i).encode())
            if failure is None:
                self.ok += 1
            else:
                self.failures.append(failure)

    async def _put(self, http: aiohttp.ClientSession, url: str, value: bytes) -> str | None:
        for _ in range(100):
            try:
                async with http.put(url, data=value, ssl=self.ctx) as r:
                    if r.status == 200:
                        return None
                    if r.status != 503:
                        return f"{url}: {r.status} {await r.text()}"
            except (aiohttp.ClientError, OSError) as e:
                return f"{url}: {e!r}"
            self.retried += 1
            await asyncio.sleep(0.1)
        return f"{url}: 503 for 10 s"

    def stop(self) -> None:
        self._stop = True


def client_ctx(cluster: TlsCluster, name: str, ca: pki.KeyPair) -> ssl.SSLContext:
    pair = pki.issue_leaf(ca, Identity.operator(STORE), NOW)
    files = TlsFiles(cluster.root / f"client-{name}")
    files.write(cluster.bundle, pair.cert_pem, pair.key_pem)
    return client_context(files, check_hostname=False)


async def tls_views(cluster: TlsCluster, ctx: ssl.SSLContext) -> dict[int, dict[str, Any]]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as http:
        return {n: (await cluster.status(http, n))["tls"] for n in cluster.ports}


async def rotate_leaves(cluster: TlsCluster, ca: pki.KeyPair, ctx: ssl.SSLContext) -> None:
    serials = {}
    for node in cluster.ports:
        pair = cluster.issue_node(node, ca)
        cluster.write_node_files(node, pair)
        serials[node] = f"{pki.info_pem(pair.cert_pem).serial:x}"

    async def reported() -> bool:
        views = await tls_views(cluster, ctx)
        return {n: v["certSerial"] for n, v in views.items()} == serials

    await cluster.wait(reported, f"every node serving its new certificate {serials}")


async def bundle_reported(cluster: TlsCluster, ctx: ssl.SSLContext, cas: list[bytes]) -> None:
    want = [pki.info_pem(c).fingerprint for c in cas]

    async def reported() -> bool:
        views = await tls_views(cluster, ctx)
        return all(v["caFingerprints"] == want for v in views.values())

    await cluster.wait(reported, f"every node trusting exactly {want}")


async def peer_hello(port: int, ctx: ssl.SSLContext, claimed: int) -> bytes:
    """What a node's peer port answers a hello over TLS with `ctx`: its own hello when it
    accepts the connection, b"" when it refuses it (TLS 1.3: the dialer learns of a
    refused certificate at its first read, as an alert or a close)."""
    try:
        reader, writer = await asyncio.open_connection(LOCAL, port, ssl=ctx)
    except (ssl.SSLError, OSError):
        return b""
    answer = b""
    try:
        writer.write(hello(PEER_MAGIC, 1, claimed))
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(64), 10)
    except (ssl.SSLError, OSError):
        pass
    writer.close()
    with contextlib.suppress(ssl.SSLError, OSError):
        await writer.wait_closed()
    return answer


def node_ctx(cluster: TlsCluster, node: int, ca: pki.KeyPair) -> ssl.SSLContext:
    pair = cluster.issue_node(node, ca)
    files = TlsFiles(cluster.root / f"dialer-{node}-{pki.info_pem(pair.cert_pem).serial:x}")
    files.write(cluster.bundle, pair.cert_pem, pair.key_pem)
    return client_context(files, check_hostname=False)


async def status_code(url: str, ctx: ssl.SSLContext) -> int | str:
    try:
        async with aiohttp.ClientSession() as http, http.get(url, ssl=ctx) as r:
            return r.status
    except aiohttp.ClientError as e:
        return repr(e)


def test_certificates_rotate_under_a_workload_with_no_failed_request(tmp_path: Path) -> None:
    cluster = TlsCluster(tmp_path)
    cluster.start()
    old_ca, new_ca = cluster.ca, pki.issue_ca(STORE, NOW)

    async def body() -> None:
        ctx = client_ctx(cluster, "old", old_ca)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as http:
            await cluster.wait_ready(http)
        work = Workload(cluster, ctx)
        task = asyncio.create_task(work.run())
        progress = [0]

        async def more_writes() -> bool:  # the workload advanced since the last phase
            return work.ok > progress[0] + 20

        try:
            await cluster.wait(more_writes, "writes before any rotation")
            # 1. New leaves from the same CA.
            progress[0] = work.ok
            await rotate_leaves(cluster, old_ca, ctx)
            await cluster.wait(more_writes, "writes after the leaf rotation")
            # 2. CA rotation: bundle old+new everywhere (clients too) ...
            progress[0] = work.ok
            cluster.set_bundle(old_ca.cert_pem + new_ca.cert_pem)
            work.ctx = ctx = client_ctx(cluster, "both", old_ca)
            await bundle_reported(cluster, ctx, [old_ca.cert_pem, new_ca.cert_pem])
            # ... then leaves (nodes' and the client's) issued by the new CA ...
            await rotate_leaves(cluster, new_ca, ctx)
            work.ctx = ctx = client_ctx(cluster, "new", new_ca)
            await cluster.wait(more_writes, "writes with leaves of the new CA")
            # ... then the old CA dropped.
            progress[0] = work.ok
            cluster.set_bundle(new_ca.cert_pem)
            work.ctx = ctx = client_ctx(cluster, "new-only", new_ca)
            await bundle_reported(cluster, ctx, [new_ca.cert_pem])
            await cluster.wait(more_writes, "writes after the old CA was dropped")
        finally:
            work.stop()
            await task
        assert work.failures == [], work.failures[:10]
        print(f"rotation workload: {work.ok} writes, {work.retried} retries of a 503")
        assert all(p.poll() is None for p in cluster.procs.values()), "a node restarted"
        # The old CA is no longer trusted, by listeners started before it was dropped:
        # a node certificate it issued gets no hello on the peer port (one of the new CA
        # does), an operator certificate it issued no answer from the API.
        stale_op = client_ctx(cluster, "stale", old_ca)
        for node, ports in cluster.ports.items():
            other = next(n for n in cluster.ports if n != node)
            fresh = await peer_hello(ports.peer, node_ctx(cluster, other, new_ca), other)
            assert fresh != b"", f"node {node} refused a certificate of the new CA"
            stale = await peer_hello(ports.peer, node_ctx(cluster, other, old_ca), other)
            assert stale == b"", f"node {node} peer port took a certificate of the old CA"
            reasons = {e["reason"] for e in cluster.log_events(node, "peer_refused")}
            assert reasons & {"unknown_ca", "untrusted_ca"}, reasons
            code = await status_code(cluster.api(node) + "/v1/status", stale_op)
            assert code != 200, f"node {node} API answered a certificate of the old CA"

    try:
        asyncio.run(asyncio.wait_for(body(), 300))
    finally:
        cluster.stop()
