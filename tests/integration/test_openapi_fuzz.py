"""schemathesis against a real one-node store on loopback, with the node's own
/v1/openapi.json: its stateless checks (no server error, documented status codes,
documented content types, response bodies matching their schemas) on every operation,
bounded in examples so the whole module stays well under 90 s on a small machine.
Twice: an insecure node (a node process), and a node with TLS and authentication (its
parts started in this process, the client API served over TLS with the node's guard)
called with a user's token."""

from __future__ import annotations

import asyncio
import datetime as dt
import queue
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from shardset import local
from shardset_node.auth import Authenticator
from shardset_node.config import HttpLimits, NodeConfig
from shardset_node.frontends.http import make_app, runner
from shardset_node.main import assemble
from shardset_proto import pki, urls
from shardset_proto.commands import MAX_VALUE_BYTES
from shardset_proto.identity import Identity, Role, token_digest
from shardset_proto.shardmap import NodeAddress, bootstrap_map
from shardset_proto.tlsfiles import TlsFiles, server_context
from shardset_proto.users import User, UserTable

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES = 25  # per operation (13 operations): bounded for CI, not exhaustive


@pytest.fixture(scope="module")
def node(one_node_store: local.LocalCluster) -> local.LocalCluster:
    return one_node_store


def _fuzz(operation: Any, base: str, **call: Any) -> str | None:
    """The first failure of one operation's cases, or None."""

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,  # the same cases every run: a failure in CI reproduces
        database=None,
    )
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=base, checks=CHECKS, timeout=15, **call)

    try:
        run()
    except Exception as e:  # a failed check: reported with the operation's name
        return f"{operation.label}: {e}"
    return None


def test_node_conforms_to_its_openapi_document(node: local.LocalCluster) -> None:
    base = node.endpoints[0]
    schema = schemathesis.openapi.from_url(base + urls.OPENAPI, timeout=10)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    failures = [f for f in (_fuzz(op, base) for op in operations) if f is not None]
    assert not failures, "\n\n".join(failures)


STORE = "local.fuzz"
TOKEN = "sst_" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class TlsNode:
    base: str
    cafile: Path


async def _serve_tls_node(
    root: Path, started: Callable[[TlsNode], None], stop: asyncio.Event
) -> None:
    """One node's parts in this loop, its client API over TLS guarded as a node with
    TLS guards it (a readwrite user `fuzz` holding TOKEN), until `stop`."""
    now = dt.datetime.now(dt.UTC)
    ca = pki.issue_ca(STORE, now)
    leaf = pki.issue_leaf(ca, Identity.node(STORE, 1), now, ips=("127.0.0.1",))
    files = TlsFiles(root / "tls")
    files.write(ca.cert_pem, leaf.cert_pem, leaf.key_pem)
    users = UserTable({"fuzz": User("fuzz", Role.READWRITE, (), token_digest(TOKEN))})
    boot = bootstrap_map({1: NodeAddress("127.0.0.1:1", "https://127.0.0.1:2")}, 2, 1)
    process = assemble(NodeConfig(1, root / "data", "127.0.0.1", 0, boot, fsync=False))
    await process.start()
    app = make_app(
        process.node, process.kv, process.reads, process.admin, process.metrics.registry,
        max_value_bytes=MAX_VALUE_BYTES, auth=Authenticator(STORE, lambda: users),
        admin_routes=False,
    )  # fmt: skip
    api = runner(app, HttpLimits())
    await api.setup()
    await web.TCPSite(
        api, "127.0.0.1", 0, ssl_context=server_context(files, require_client_cert=False)
    ).start()
    try:
        for _ in range(600):  # a bound (60 s) on the one-node store electing its leaders
            if not process.node.readiness_problems():
                break
            await asyncio.sleep(0.1)
        started(TlsNode(f"https://127.0.0.1:{api.addresses[0][1]}", files.ca))
        await stop.wait()
    finally:
        await api.cleanup()
        await process.stop()


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsNode]:
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    ready: queue.Queue[TlsNode | BaseException] = queue.Queue()

    def run() -> None:
        root = tmp_path_factory.mktemp("tls-node")
        try:
            loop.run_until_complete(_serve_tls_node(root, ready.put, stop))
        except BaseException as e:  # reported to the test, not lost in the thread
            ready.put(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    got = ready.get(timeout=120)
    if isinstance(got, BaseException):
        raise got
    try:
        yield got
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=60)
        loop.close()


def test_node_with_tls_conforms_to_its_openapi_document(tls_node: TlsNode) -> None:
    verify = str(tls_node.cafile)  # per request: requests lets REQUESTS_CA_BUNDLE win over
    with requests.Session() as session:  # a session's own `verify`
        doc = session.get(tls_node.base + urls.OPENAPI, verify=verify, timeout=10).json()
        assert set(doc["components"]["securitySchemes"]) == {"bearer", "mutualTLS"}
        schema = schemathesis.openapi.from_dict(doc)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 9
        headers = {"Authorization": f"Bearer {TOKEN}"}
        failures = [
            f
            for f in (
                _fuzz(op, tls_node.base, session=session, headers=headers, verify=verify)
                for op in operations
            )
            if f is not None
        ]
    assert not failures, "\n\n".join(failures)
    # Without the token, every guarded operation is refused, as documented.
    r = requests.get(tls_node.base + "/v1/kv/k", verify=verify, timeout=10)
    assert (r.status_code, r.json()["error"]) == (401, "unauthenticated")
