"""A store's PKI and user table for the front ends' authentication tests: one CA, the
certificates of nodes, the operator and users, as TLS directories (ca.crt, tls.crt,
tls.key) and real ssl contexts; a user table the tests change while connections are
open; stand-ins for the node's parts the front ends call."""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from shardset_proto import pki
from shardset_proto.identity import Identity, Role, token_digest
from shardset_proto.shardmap import NodeAddress, bootstrap_map
from shardset_proto.tlsfiles import TlsFiles, client_context, server_context
from shardset_proto.users import User, UserTable

STORE = "local.test"
OTHER = "local.other"
NOW = dt.datetime.now(dt.UTC)
TOKENS = {name: f"sst_{name}-token-{'x' * 30}" for name in ("reader", "writer", "boss", "app")}
USERS = {
    "reader": User("reader", Role.READ, (), token_digest(TOKENS["reader"])),
    "writer": User("writer", Role.READWRITE, (), token_digest(TOKENS["writer"])),
    "boss": User("boss", Role.ADMIN, (), token_digest(TOKENS["boss"])),
    "app": User("app", Role.READWRITE, ("app/",), token_digest(TOKENS["app"])),
}


@dataclass
class Users:
    """The store's user table, changed by tests (as PutUser/DeleteUser commits would)."""

    table: UserTable = field(default_factory=lambda: UserTable(dict(USERS)))

    def __call__(self) -> UserTable:
        return self.table

    def delete(self, name: str) -> None:
        self.table = self.table.delete(name)


@dataclass(frozen=True)
class Pki:
    root: Path
    ca: pki.KeyPair

    def files(self, name: str) -> TlsFiles:
        return TlsFiles(self.root / name)

    def server(self, *, require_client_cert: bool) -> ssl.SSLContext:
        return server_context(self.files("node-1"), require_client_cert=require_client_cert)

    def client(self, name: str | None) -> ssl.SSLContext:
        """A client's context: `name`'s certificate, or none (a token client)."""
        if name is None:
            return client_context(cafile=self.files("node-1").ca)
        return client_context(self.files(name))


def _identities() -> dict[str, Identity]:
    return {
        "node-1": Identity.node(STORE, 1),
        "node-2": Identity.node(STORE, 2),
        "operator": Identity.operator(STORE),
        "reader": Identity.user(STORE, "reader"),
        "writer": Identity.user(STORE, "writer"),
        "boss": Identity.user(STORE, "boss"),
        "app": Identity.user(STORE, "app"),
        "gone": Identity.user(STORE, "gone"),  # a user not (or no longer) in the table
        "other-operator": Identity.operator(OTHER),  # same CA, another store
    }


def make_pki(root: Path) -> Pki:
    ca = pki.issue_ca(STORE, NOW)
    for name, ident in _identities().items():
        leaf = pki.issue_leaf(ca, ident, NOW, dns=("localhost",), ips=("127.0.0.1",))
        TlsFiles(root / name).write(ca.cert_pem, leaf.cert_pem, leaf.key_pem)
    return Pki(root, ca)


# --- stand-ins for the node's parts the front ends call (no Raft) -------------------
_WRITE = {"shard": 0, "index": 1, "epoch": 1}
_READ = {**_WRITE, "consistency": "eventual", "replica": 1}


class FakeNode:
    id = 1

    def __init__(self) -> None:
        boot = bootstrap_map({1: NodeAddress("127.0.0.1:1", "https://127.0.0.1:2")}, 1, 1)
        self.meta = SimpleNamespace(map=boot)
        self.host = SimpleNamespace(disk_stall=None, groups={})

    def check_alive(self) -> None:
        pass

    def liveness_problems(self) -> list[str]:
        return []

    def readiness_problems(self) -> list[str]:
        return []


class FakeKv:
    """Stands in for KvWrites (and counts the writes that reached it)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    async def put(self, key: bytes, value: bytes, idem: bytes | None, path: str) -> dict[str, Any]:
        self.writes.append(key)
        return {**_WRITE, "prev_exists": False}

    async def delete(self, key: bytes, idem: bytes | None, path: str) -> dict[str, Any]:
        self.writes.append(key)
        return {**_WRITE, "existed": False}

    async def cas(
        self, key: bytes, expected: bytes | None, value: bytes | None, idem: bytes | None,
        path: str,
    ) -> dict[str, Any]:  # fmt: skip
        self.writes.append(key)
        return {**_WRITE, "ok": True, "current": None}


class FakeReads:
    async def get(
        self, key: bytes, mode: str | None, bound: int | None, token: int, path: str
    ) -> dict[str, Any]:
        return {**_READ, "value": b"v"}

    async def scan(self, shard: int, start: str, end: str | None, *rest: object) -> dict[str, Any]:
        return {**_READ, "items": []}


class FakeAdmin:
    async def run(self, action: str, body: object) -> dict[str, Any]:
        return {"ran": action}
