"""The HTTP front end's guard over real TLS (the node's server contexts, clients with
certificates of the store's CA or a bearer token): who may do what on the client API
and on the admin API, each refusal named, the open routes open, the OpenAPI document
naming every answer given; and without an Authenticator, nothing checked (an insecure
node as before)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from authkit import NOW, OTHER, STORE, TOKENS, FakeAdmin, FakeKv, FakeNode, FakeReads, Pki, Users
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from shardset_node.admin.dispatch import Admin
from shardset_node.auth import Authenticator
from shardset_node.config import HttpLimits
from shardset_node.core import Node
from shardset_node.frontends.http import make_admin_app, make_app, runner
from shardset_node.kv import KvWrites
from shardset_node.reads import ReadPath
from shardset_node.tls import NodeTls
from shardset_proto import pki
from shardset_proto.identity import Identity
from shardset_proto.tlsfiles import TlsFiles, client_context

BOUND = 30.0  # bounds a test that would otherwise hang: not a speed claim
MAX_VALUE = 1 << 20


@dataclass
class Case:
    who: str | None  # the client certificate presented (None: none)
    token: str | None  # the bearer token sent (a TOKENS name, or the token itself)
    method: str
    path: str
    status: int
    says: str = ""  # the answer's message contains this


def _client_app(auth: Authenticator | None, kv: FakeKv, admin_routes: bool) -> web.Application:
    return make_app(
        cast(Node, FakeNode()), cast(KvWrites, kv), cast(ReadPath, FakeReads()),
        cast(Admin, FakeAdmin()), CollectorRegistry(), max_value_bytes=MAX_VALUE, auth=auth,
        admin_routes=admin_routes,
    )  # fmt: skip


@asynccontextmanager
async def _serving(app: web.Application, ctx: ssl.SSLContext | None) -> AsyncIterator[str]:
    """Serves `app` as the node does (its runner, a TCP site with the node's TLS context)."""
    api = runner(app, HttpLimits())
    await api.setup()
    await web.TCPSite(api, "127.0.0.1", 0, ssl_context=ctx).start()
    try:
        port = api.addresses[0][1]
        yield f"{'https' if ctx else 'http'}://127.0.0.1:{port}"
    finally:
        await api.cleanup()


async def _call(pki: Pki, base: str, case: Case) -> tuple[int, dict[str, Any]]:
    headers = {}
    if case.token is not None:
        headers["Authorization"] = f"Bearer {TOKENS.get(case.token, case.token)}"
    ctx = pki.client(case.who) if base.startswith("https") else None
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx or False)) as s:
        data = b"{}" if case.method == "POST" else b"v"
        async with s.request(case.method, base + case.path, data=data, headers=headers) as r:
            ctype = r.content_type
            body = await r.json() if ctype == "application/json" and r.method != "HEAD" else {}
            return r.status, body


async def _check(pki: Pki, base: str, cases: list[Case]) -> list[str]:
    """Every case's mismatch (wrong status, message not naming what it should)."""
    wrong = []
    for case in cases:
        status, body = await asyncio.wait_for(_call(pki, base, case), BOUND)
        message = str(body.get("message", ""))
        if status != case.status or case.says not in message:
            wrong.append(f"{case}: got {status} {body}")
    return wrong


CLIENT_CASES = [
    Case(None, None, "GET", "/v1/kv/k", 401, "no credentials"),
    Case(None, None, "HEAD", "/v1/kv/k", 401),
    Case(None, None, "GET", "/v1/shardmap", 401, "no credentials"),
    Case(None, None, "GET", "/v1/status", 401, "no credentials"),
    Case(None, "sst_never-issued", "GET", "/v1/kv/k", 401, "unknown token"),
    Case(None, "reader", "GET", "/v1/kv/k", 200),
    Case(None, "reader", "PUT", "/v1/kv/k", 403, "(role read, token) may not do kv.write"),
    Case("reader", None, "DELETE", "/v1/kv/k", 403, "may not do kv.write"),
    Case("reader", None, "GET", "/v1/shardmap", 200),
    Case(None, "writer", "PUT", "/v1/kv/k", 200),
    Case(None, "writer", "DELETE", "/v1/kv/k", 200),
    Case(None, "writer", "POST", "/v1/cas/k", 400),  # authorized; the body is the problem
    Case(None, "writer", "POST", "/v1/admin/consistency", 404),  # not on the client port
    Case("operator", None, "POST", "/v1/admin/consistency", 404),
    Case(None, "app", "PUT", "/v1/kv/app%2Fx", 200),
    Case(None, "app", "PUT", "/v1/kv/other", 403, "key 'other' is outside the prefixes"),
    Case("app", None, "GET", "/v1/scan?shard=0&start=app/&end=app0", 200),
    Case("app", None, "GET", "/v1/scan?shard=0&start=app/", 403, "outside the prefixes"),
    Case("gone", None, "GET", "/v1/kv/k", 401, "user gone, who is not a user"),
    Case("other-operator", None, "GET", "/v1/kv/k", 401, f"issued for store {OTHER}"),
    Case("node-2", None, "PUT", "/v1/kv/k", 200),
    Case("operator", None, "GET", "/v1/kv/k", 200),
    *[Case(None, None, "GET", p, 200) for p in ("/healthz", "/readyz", "/metrics")],
    Case(None, None, "GET", "/v1/openapi.json", 200),
    Case(None, None, "GET", "/v1/nowhere", 404),
]


def test_client_api_roles_prefixes_and_credentials(store_pki: Pki, users: Users) -> None:
    async def scenario() -> tuple[list[str], list[bytes]]:
        kv = FakeKv()
        app = _client_app(Authenticator(STORE, users), kv, admin_routes=False)
        async with _serving(app, store_pki.server(require_client_cert=False)) as base:
            return await _check(store_pki, base, CLIENT_CASES), kv.writes

    with capture_logs() as logs:
        wrong, writes = asyncio.run(scenario())
    assert wrong == []
    # Only the authorized writes reached the store.
    assert sorted(writes) == [b"app/x", b"k", b"k", b"k"]
    # Each refusal logged with its reason, the remote and the identity claimed.
    refusals = [e for e in logs if e["event"] == "http_request_refused"]
    assert len(refusals) == sum(c.status in (401, 403) for c in CLIENT_CASES)
    assert all(e["remote"] == "127.0.0.1" and e["reason"] for e in refusals)
    claimed = {e["claimed"] for e in refusals}
    assert {"user reader (role read, cert)", "shardset://local.test/user/gone"} <= claimed


def test_401_names_the_bearer_scheme(store_pki: Pki, users: Users) -> None:
    async def scenario() -> tuple[int, str | None]:
        app = _client_app(Authenticator(STORE, users), FakeKv(), admin_routes=False)
        async with (
            _serving(app, store_pki.server(require_client_cert=False)) as base,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=store_pki.client(None))) as s,
            s.get(base + "/v1/kv/k") as r,
        ):
            return r.status, r.headers.get("WWW-Authenticate")

    assert asyncio.run(scenario()) == (401, 'Bearer realm="shardset"')


def test_revoked_token_and_deleted_users_certificate(store_pki: Pki, users: Users) -> None:
    async def scenario() -> list[str]:
        app = _client_app(Authenticator(STORE, users), FakeKv(), admin_routes=False)
        async with _serving(app, store_pki.server(require_client_cert=False)) as base:
            before = await _check(
                store_pki, base,
                [Case(None, "writer", "PUT", "/v1/kv/k", 200), Case("writer", None, "GET",
                 "/v1/kv/k", 200)],
            )  # fmt: skip
            users.delete("writer")
            after = [
                Case(None, "writer", "PUT", "/v1/kv/k", 401, "revoked token: user writer"),
                Case("writer", None, "GET", "/v1/kv/k", 401, "user writer, who is not a user"),
            ]
            return before + await _check(store_pki, base, after)

    assert asyncio.run(scenario()) == []


ADMIN_CASES = [
    Case("operator", None, "POST", "/v1/admin/consistency", 200),
    Case("node-2", None, "POST", "/v1/admin/add-node", 200),
    Case("boss", None, "POST", "/v1/admin/split-shard", 200),  # an admin user's certificate
    Case("boss", "boss", "POST", "/v1/admin/consistency", 401, "not a bearer token"),
    Case("writer", "boss", "POST", "/v1/admin/consistency", 401, "not a bearer token"),
    Case("writer", None, "POST", "/v1/admin/consistency", 403, "may not do store.admin"),
    Case("reader", None, "POST", "/v1/admin/consistency", 403, "may not do store.admin"),
    Case("gone", None, "POST", "/v1/admin/consistency", 401, "not a user"),
    Case("other-operator", None, "POST", "/v1/admin/remove-node", 401, f"store {OTHER}"),
    Case("operator", None, "GET", "/v1/kv/k", 404),  # no client API on the admin port
    Case("operator", None, "GET", "/healthz", 200),
]


def test_admin_api_takes_certificates_with_store_admin_only(store_pki: Pki, users: Users) -> None:
    async def scenario() -> tuple[list[str], type[BaseException] | None]:
        app = make_admin_app(
            cast(Node, FakeNode()), cast(Admin, FakeAdmin()),
            auth=Authenticator(STORE, users), max_value_bytes=MAX_VALUE,
        )  # fmt: skip
        async with _serving(app, store_pki.server(require_client_cert=True)) as base:
            wrong = await _check(store_pki, base, ADMIN_CASES)
            # A token alone does not even get through the TLS handshake.
            tokened = Case(None, "boss", "POST", "/v1/admin/consistency", 0)
            try:
                await _call(store_pki, base, tokened)
            except aiohttp.ClientError as e:
                return wrong, type(e)
            return wrong, None

    wrong, refused = asyncio.run(scenario())
    assert wrong == []
    assert refused is not None and issubclass(refused, aiohttp.ClientError)


def test_admin_routes_on_the_client_port_take_certificates_only(
    store_pki: Pki, users: Users
) -> None:
    cases = [
        Case("operator", None, "POST", "/v1/admin/consistency", 200),
        Case(None, "boss", "POST", "/v1/admin/consistency", 401, "not a bearer token"),
        Case("writer", None, "POST", "/v1/admin/consistency", 403, "store.admin"),
    ]

    async def scenario() -> list[str]:
        app = _client_app(Authenticator(STORE, users), FakeKv(), admin_routes=True)
        async with _serving(app, store_pki.server(require_client_cert=False)) as base:
            return await _check(store_pki, base, cases)

    assert asyncio.run(scenario()) == []


def test_insecure_node_checks_nothing(store_pki: Pki) -> None:
    cases = [
        Case(None, None, "PUT", "/v1/kv/k", 200),
        Case(None, "sst_anything", "GET", "/v1/kv/k", 200),
        Case(None, None, "POST", "/v1/admin/consistency", 200),
        Case(None, None, "GET", "/v1/shardmap", 200),
    ]

    async def scenario() -> tuple[list[str], dict[str, Any]]:
        async with _serving(_client_app(None, FakeKv(), admin_routes=True), None) as base:
            wrong = await _check(store_pki, base, cases)
            async with aiohttp.ClientSession() as s, s.get(base + "/v1/openapi.json") as r:
                return wrong, await r.json()

    wrong, doc = asyncio.run(scenario())
    assert wrong == []
    assert "components" not in doc and "security" not in doc


def test_keep_alive_connection_rechecks_the_user_table_every_request(
    store_pki: Pki, users: Users
) -> None:
    async def scenario() -> list[int]:
        app = _client_app(Authenticator(STORE, users), FakeKv(), admin_routes=False)
        got = []
        async with (
            _serving(app, store_pki.server(require_client_cert=False)) as base,
            aiohttp.ClientSession(connector=_one_connection(store_pki.client("writer"))) as s,
        ):
            for delete in (False, True):
                if delete:
                    users.delete("writer")
                async with s.put(base + "/v1/kv/k", data=b"v") as r:
                    got.append(r.status)
        return got

    assert asyncio.run(scenario()) == [200, 401]


def test_ca_dropped_refuses_new_connections_and_open_ones_live_on(
    tmp_path: Path, users: Users
) -> None:
    """With the node's own certificate check (NodeTls.verify: the CURRENT bundle)."""
    old, new = pki.issue_ca(STORE, NOW), pki.issue_ca(STORE, NOW)
    node_dir, op_dir = TlsFiles(tmp_path / "node"), TlsFiles(tmp_path / "operator")
    leaf = pki.issue_leaf(new, Identity.node(STORE, 1), NOW, ips=("127.0.0.1",))
    node_dir.write(old.cert_pem + new.cert_pem, leaf.cert_pem, leaf.key_pem)
    op = pki.issue_leaf(old, Identity.operator(STORE), NOW)
    op_dir.write(new.cert_pem, op.cert_pem, op.key_pem)
    node_tls = NodeTls(node_dir.directory, STORE, 1)

    async def scenario() -> tuple[list[int], type[BaseException] | None]:
        auth = Authenticator(STORE, users, node_tls.verify)
        app = _client_app(auth, FakeKv(), admin_routes=False)
        got = []
        async with (
            _serving(app, node_tls.server_context(require_client_cert=False)) as base,
            aiohttp.ClientSession(connector=_one_connection(client_context(op_dir))) as s,
        ):
            for rotated in (False, True):
                if rotated:  # the end of a CA rotation: the old CA leaves the bundle
                    node_dir.write(new.cert_pem, leaf.cert_pem, leaf.key_pem)
                    assert node_tls.reload()
                async with s.get(base + "/v1/kv/k") as r:
                    got.append(r.status)
            try:
                async with (
                    aiohttp.ClientSession(connector=_one_connection(client_context(op_dir))) as s2,
                    s2.get(base + "/v1/kv/k") as r,
                ):
                    got.append(r.status)
            except aiohttp.ClientError as e:
                return got, type(e)
        return got, None

    got, refused = asyncio.run(scenario())
    assert got == [200, 200]  # the open connection lived on
    assert refused is not None  # a new one with the old CA's certificate did not


def _one_connection(ctx: ssl.SSLContext) -> aiohttp.TCPConnector:
    return aiohttp.TCPConnector(ssl=ctx, limit=1)


@pytest.mark.parametrize("admin_routes", [False, True])
def test_openapi_document_names_the_security_and_every_refusal(
    store_pki: Pki, users: Users, admin_routes: bool
) -> None:
    async def scenario() -> dict[str, Any]:
        app = _client_app(Authenticator(STORE, users), FakeKv(), admin_routes=admin_routes)
        async with (
            _serving(app, store_pki.server(require_client_cert=False)) as base,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=store_pki.client(None))) as s,
            s.get(base + "/v1/openapi.json") as r,
        ):
            return cast(dict[str, Any], await r.json())

    doc = asyncio.run(scenario())
    assert set(doc["components"]["securitySchemes"]) == {"bearer", "mutualTLS"}
    assert ("/v1/admin/{action}" in doc["paths"]) == admin_routes
    for case in CLIENT_CASES:
        template = _template(case.path)
        if template is None:
            continue
        op = doc["paths"][template][case.method.lower().replace("head", "get")]
        assert str(case.status) in op["responses"], f"{case} answers an undocumented status"
        open_route = case.status == 200 and case.who is None and case.token is None
        assert (op.get("security") == []) == open_route, f"{case}: security {op.get('security')}"
    if admin_routes:
        admin = doc["paths"]["/v1/admin/{action}"]["post"]
        assert admin["security"] == [{"mutualTLS": []}]
        assert {"401", "403"} <= set(admin["responses"])


def _template(path: str) -> str | None:
    """The document's path for a request path (None: not in the document)."""
    path = path.partition("?")[0]
    for prefix, template in (("/v1/kv/", "/v1/kv/{key}"), ("/v1/cas/", "/v1/cas/{key}")):
        if path.startswith(prefix):
            return template
    return None if path.startswith(("/v1/admin/", "/v1/nowhere", "/v1/openapi")) else path
