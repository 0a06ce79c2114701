"""The operator's calls to nodes (aiohttp, every call with a timeout).

Answers are parsed here, once, into the contract's typed reports
(`shardset_proto.status`); admin calls send the contract's typed bodies
(`shardset_proto.admin`), each knowing its action and URL.

With TLS (issue 16) one client per store (`for_store`) presents the operator's
certificate of that store and trusts that store's CA bundle only, checking each node's
host name: the store's Secret `<name>-operator-tls`, handed over by reconcile/tls.py.
The ssl context is rebuilt only when that material changes (a renewal, a CA rotation).
"""

from __future__ import annotations

import hashlib
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel, ValidationError

from shardset_proto import urls
from shardset_proto.admin import AdminBody, SetConsistency
from shardset_proto.status import NodeStatus, ShardMapView
from shardset_proto.tlsfiles import TlsFiles, client_context

STATUS_TIMEOUT_S = 3.0
ADMIN_TIMEOUT_S = 10.0

Report = TypeVar("Report", bound=BaseModel)


class NodeCallError(RuntimeError):
    """A node did not answer as hoped; the message says which node, what and why.

    `status` and `code` are the node's HTTP status and error code when it answered."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.leader_url: str | None = None  # a 307's leader, to retry there


@dataclass(frozen=True)
class ClientTls:
    """The operator's credentials for one store (PEM, as its Secret holds them)."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    def digest(self) -> str:
        parts = (self.ca_pem, self.cert_pem, self.key_pem)
        return hashlib.sha256(b"\0".join(parts)).hexdigest()


def ssl_context(tls: ClientTls) -> ssl.SSLContext:
    """A TLS 1.3 client context presenting the operator's certificate, trusting the
    store's CA bundle, checking host names. ssl loads keys from files only: they live
    in a private temporary directory for the duration of the load."""
    with tempfile.TemporaryDirectory(prefix="shardset-tls-") as tmp:
        files = TlsFiles(Path(tmp))
        files.write(tls.ca_pem, tls.cert_pem, tls.key_pem)
        return client_context(files, check_hostname=True)


class NodeClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        tls: ssl.SSLContext | None = None,
        contexts: dict[str, tuple[str, ssl.SSLContext]] | None = None,
    ) -> None:
        self.session = session
        self.tls = tls
        # store -> (digest of its material, context): shared by every per-store client.
        self.contexts: dict[str, tuple[str, ssl.SSLContext]] = (
            contexts if contexts is not None else {}
        )

    def for_store(self, store: str, tls: ClientTls | None) -> NodeClient:
        """A client for one store's nodes: with its operator certificate, or plain
        (spec.tls.mode Disabled). Raises TlsFilesError when the material does not load."""
        if tls is None:
            return NodeClient(self.session, None, self.contexts)
        digest = tls.digest()
        cached = self.contexts.get(store)
        if cached is None or cached[0] != digest:
            cached = (digest, ssl_context(tls))
            self.contexts[store] = cached
        return NodeClient(self.session, cached[1], self.contexts)

    def forget(self, store: str) -> None:
        self.contexts.pop(store, None)

    async def status(self, url: str) -> NodeStatus:
        return await self._get(NodeStatus, f"{url}{urls.STATUS}")

    async def shardmap(self, url: str) -> ShardMapView:
        return await self._get(ShardMapView, f"{url}{urls.SHARDMAP}")

    async def set_consistency(self, url: str, body: SetConsistency) -> dict[str, Any]:
        return await self._call("POST", f"{url}{body.path()}", body.to_json(), ADMIN_TIMEOUT_S)

    async def admin(self, url: str, body: AdminBody) -> dict[str, Any]:
        """POST the body to its action's URL; follows one redirect to the leader the
        node names."""
        try:
            return await self._call("POST", f"{url}{body.path()}", body.to_json(), ADMIN_TIMEOUT_S)
        except NodeCallError as e:
            if e.status != 307 or not e.leader_url:
                raise
            leader = e.leader_url
        return await self._call("POST", f"{leader}{body.path()}", body.to_json(), ADMIN_TIMEOUT_S)

    async def _get(self, report: type[Report], url: str) -> Report:
        payload = await self._call("GET", url, None, STATUS_TIMEOUT_S)
        try:
            return report.model_validate(payload)
        except ValidationError as e:
            raise NodeCallError(f"GET {url}: not a {report.__name__}: {e}") from e

    async def _call(
        self, method: str, url: str, body: dict[str, Any] | None, timeout: float
    ) -> dict[str, Any]:
        try:
            async with self.session.request(
                method,
                url,
                json=body,
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
                ssl=self.tls if self.tls is not None else True,
            ) as rsp:
                payload = await rsp.json(content_type=None)
                if rsp.status >= 300:
                    raise _answer_error(method, url, rsp.status, payload)
        except (aiohttp.ClientError, TimeoutError, ValueError, ssl.SSLError) as e:
            raise NodeCallError(f"{method} {url}: {type(e).__name__}: {e}") from e
        if not isinstance(payload, dict):
            raise NodeCallError(f"{method} {url}: expected a JSON object, got {payload!r}")
        return payload


def _answer_error(method: str, url: str, status: int, payload: object) -> NodeCallError:
    fields = payload if isinstance(payload, dict) else {}
    detail = fields.get("message", payload)
    error = NodeCallError(f"{method} {url}: HTTP {status}: {detail}", status, fields.get("error"))
    leader_url = fields.get("leader_url")
    error.leader_url = leader_url if isinstance(leader_url, str) else None
    return error
