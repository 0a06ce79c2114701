"""A small cluster of real node processes started with the TLS flags (issue 16), for the
integration tests of mutual TLS on the peer port and of live certificate rotation.

Each node gets a TLS directory laid out like the operator's node Secret (`ca.crt`,
`node-<id>.crt`, `node-<id>.key`), four ports (peer, API, admin, wire) advertised in
the bootstrap map, and `--tls-reload-s` short enough for rotation tests to be quick.
The test client presents the operator's certificate. Certificates come from
shardset_proto.pki. Every wait is a bounded poll of a condition, never a sleep.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from shardset_proto import pki
from shardset_proto.identity import Identity
from shardset_proto.shardmap import NodeAddress, bootstrap_map
from shardset_proto.tlsfiles import TlsFiles, client_context

LOCAL = "127.0.0.1"
STORE = "local.tlstest"
NOW = dt.datetime.now(dt.UTC)
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        return int(s.getsockname()[1])


def write_atomic(path: Path, data: bytes) -> None:
    """As a Secret volume update would: the whole file replaced at once."""
    tmp = path.with_name(f".{path.name}.new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass
class Ports:
    peer: int = field(default_factory=free_port)
    api: int = field(default_factory=free_port)
    admin: int = field(default_factory=free_port)
    wire: int = field(default_factory=free_port)


@dataclass
class TlsCluster:
    root: Path
    nodes: int = 3
    shards: int = 2
    tls: bool = True
    ca: pki.KeyPair = field(default_factory=lambda: pki.issue_ca(STORE, NOW))
    ports: dict[int, Ports] = field(default_factory=dict)
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    bundle: bytes = b""  # ca.crt the nodes trust now

    def __post_init__(self) -> None:
        self.ports = {n: Ports() for n in range(1, self.nodes + 1)}
        self.bundle = self.ca.cert_pem

    # --- files -------------------------------------------------------------------------
    def tls_dir(self, node: int) -> Path:
        return self.root / f"tls-{node}"

    def issue_node(self, node: int, ca: pki.KeyPair | None = None) -> pki.KeyPair:
        return pki.issue_leaf(ca or self.ca, Identity.node(STORE, node), NOW, ips=(LOCAL,))

    def write_node_files(self, node: int, pair: pki.KeyPair) -> None:
        d = self.tls_dir(node)
        d.mkdir(parents=True, exist_ok=True)
        write_atomic(d / "ca.crt", self.bundle)
        # Key first, then the certificate: a node that reads in between sees a mismatch
        # and keeps its old pair (tls_reload_failed), then loads both at its next poll.
        write_atomic(d / f"node-{node}.key", pair.key_pem)
        write_atomic(d / f"node-{node}.crt", pair.cert_pem)

    def set_bundle(self, bundle: bytes) -> None:
        self.bundle = bundle
        for node in self.ports:
            write_atomic(self.tls_dir(node) / "ca.crt", bundle)

    def client_dir(self, name: str, ca: pki.KeyPair | None = None) -> TlsFiles:
        """A client's TLS directory with the operator's certificate (the current bundle)."""
        pair = pki.issue_leaf(ca or self.ca, Identity.operator(STORE), NOW)
        files = TlsFiles(self.root / f"client-{name}")
        files.write(self.bundle, pair.cert_pem, pair.key_pem)
        return files

    def client_ssl(self, name: str = "operator", ca: pki.KeyPair | None = None) -> ssl.SSLContext:
        return client_context(self.client_dir(name, ca), check_hostname=False)

    # --- processes -----------------------------------------------------------------------
    def address(self, node: int) -> NodeAddress:
        p = self.ports[node]
        if not self.tls:
            return NodeAddress(f"{LOCAL}:{p.peer}", f"http://{LOCAL}:{p.api}")
        return NodeAddress(
            f"{LOCAL}:{p.peer}",
            f"https://{LOCAL}:{p.api}",
            f"https://{LOCAL}:{p.admin}",
            f"{LOCAL}:{p.wire}",
        )

    def api(self, node: int) -> str:
        return self.address(node).api

    def start(self) -> None:
        boot = bootstrap_map({n: self.address(n) for n in self.ports}, self.shards, self.nodes)
        boot_file = self.root / "bootstrap.json"
        self.root.mkdir(parents=True, exist_ok=True)
        boot_file.write_bytes(boot.encode())
        for node in self.ports:
            if self.tls and not (self.tls_dir(node) / f"node-{node}.crt").exists():
                self.write_node_files(node, self.issue_node(node))
            self.procs[node] = self._spawn(node, boot_file)

    def _spawn(self, node: int, boot_file: Path) -> subprocess.Popen[bytes]:
        p = self.ports[node]
        args = [
            sys.executable, "-m", "shardset_node", "--id", str(node),
            "--data-dir", str(self.root / f"data-{node}"),
            "--peer", f"{LOCAL}:{p.peer}", "--api", f"{LOCAL}:{p.api}",
            "--bootstrap", str(boot_file), "--no-fsync", "--log-format", "json",
        ]  # fmt: skip
        if self.tls:
            args += [
                "--tls-dir", str(self.tls_dir(node)), "--store", STORE, "--tls-reload-s", "0.3",
                "--admin", f"{LOCAL}:{p.admin}", "--wire", f"{LOCAL}:{p.wire}",
            ]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=f"{ROOT / 'node-image'}")
        log = (self.root / f"node-{node}.log").open("ab")
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            proc.wait(timeout=30)

    def log_events(self, node: int, event: str) -> list[dict[str, Any]]:
        out = []
        for line in (self.root / f"node-{node}.log").read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == event:
                out.append(record)
        return out

    def log_tail(self, lines: int = 30) -> str:
        out = []
        for node in self.ports:
            path = self.root / f"node-{node}.log"
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- node {node} ---\n" + "\n".join(text))
        return "\n".join(out)

    # --- talking to it ---------------------------------------------------------------------
    def session(self, ctx: ssl.SSLContext | None = None) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(ssl=ctx if ctx is not None else False)
        if self.tls and ctx is None:
            connector = aiohttp.TCPConnector(ssl=self.client_ssl())
        return aiohttp.ClientSession(connector=connector)

    async def status(self, http: aiohttp.ClientSession, node: int) -> dict[str, Any]:
        async with http.get(self.api(node) + "/v1/status") as r:
            assert r.status == 200, (r.status, await r.text())
            return dict(await r.json())

    async def wait(self, cond: Callable[[], Any], what: str, timeout: float = 60.0) -> None:
        """Poll an async condition (a coroutine function returning truthy) until it holds."""

        async def poll() -> None:
            while True:
                try:
                    if await cond():
                        return
                except (aiohttp.ClientError, OSError, AssertionError, TimeoutError):
                    pass
                for node, proc in self.procs.items():
                    if proc.poll() is not None:
                        raise AssertionError(
                            f"node {node} exited ({proc.returncode}) "
                            f"waiting for {what}\n{self.log_tail()}"
                        )
                await asyncio.sleep(0.1)

        try:
            await asyncio.wait_for(poll(), timeout)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}\n{self.log_tail()}") from None

    async def wait_ready(self, http: aiohttp.ClientSession) -> dict[int, int]:
        """Every shard has a leader every node agrees on; {shard: leader}."""
        leaders: dict[int, int] = {}

        async def agreed() -> bool:
            seen: list[dict[int, int]] = []
            for node in self.ports:
                status = await self.status(http, node)
                seen.append({
                    int(k): g["leader"] for k, g in status["groups"].items() if k.isdigit()
                })  # fmt: skip
            first = seen[0]
            if len(first) != self.shards or 0 in first.values() or any(s != first for s in seen):
                return False
            leaders.update(first)
            return True

        await self.wait(agreed, "a leader of every shard")
        return leaders
