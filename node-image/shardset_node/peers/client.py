"""Admin calls from this node to other nodes' HTTP APIs (`POST /v1/admin/<action>`).

A call addressed to this node itself goes straight to the local admin handler, so an
orchestration (a split, a recovery) can name every replica alike.

With a NodeTls (issue 16) calls go to the target's admin URL (`NodeAddress.admin_url`:
its admin port, HTTPS with client certificates required) presenting this node's
certificate; the context comes from the node's current TLS generation on every call, so
connections opened after a certificate reload use the new one. The answer is taken only
from a server whose certificate names the node called.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp.connector import Connection
from aiohttp.tracing import Trace
from yarl import URL

from shardset_node.config import META_GROUP, REQUEST_TIMEOUT
from shardset_node.tls import NodeTls, PeerRefused
from shardset_proto.admin import AdminBody
from shardset_proto.errors import ApiError
from shardset_proto.shardmap import ShardMap

LocalAdmin = Callable[[AdminBody], Awaitable[dict[str, Any]]]
# The largest answer read from a peer: admin answers are small JSON objects (the bulk of
# a slot move travels in requests), so this only bounds what a broken peer can cost.
MAX_ANSWER_BYTES = 16 * 1024 * 1024


class PeerClient:
    def __init__(
        self, node_id: int, shard_map: Callable[[], ShardMap], tls: NodeTls | None = None
    ) -> None:
        self.node_id = node_id
        self._tls = tls
        self._map = shard_map  # the current map: where each node's API is
        self._local: LocalAdmin | None = None
        self._http: aiohttp.ClientSession | None = None  # opened on first use

    def serve_locally(self, handler: LocalAdmin) -> None:
        """Calls to this node itself go to `handler` (set once, by the composition root)."""
        self._local = handler

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def call(
        self, node: int, body: AdminBody, timeout: float = REQUEST_TIMEOUT * 2
    ) -> dict[str, Any]:
        """An admin call (the action its body's) to another node, or to this one directly."""
        if node == self.node_id:
            assert self._local is not None, "serve_locally() was not called"
            return await self._local(body)
        if self._http is None:  # one pool of connections for every call
            connector = None if self._tls is None else _CheckedConnector(self._check_server)
            self._http = aiohttp.ClientSession(connector=connector)
        action = body.action
        address = self._map().nodes.get(node)
        if address is None:  # a stale list of replicas: retryable, like a node that is down
            raise ApiError(
                503,
                "peer_unreachable",
                f"node {node} {action}: not in the shard map",
                retry_after=1,
            )
        url = address.admin_url + body.path()
        limit = aiohttp.ClientTimeout(total=timeout)
        try:
            return await self._post(node, action, url, body.to_json(), limit)
        except (aiohttp.ClientError, TimeoutError) as e:
            # A peer that is down is a retryable condition for the caller, not a crash.
            raise ApiError(
                503,
                "peer_unreachable",
                f"node {node} {action}: {type(e).__name__}: {e}",
                retry_after=1,
            ) from e

    async def _post(
        self, node: int, action: str, url: str, body: dict[str, Any], limit: aiohttp.ClientTimeout
    ) -> dict[str, Any]:
        assert self._http is not None
        # Per call: a reload's new context (and so new pooled connections) at once.
        ssl_ctx = True if self._tls is None else self._tls.client_context()
        async with self._http.post(url, json=body, timeout=limit, ssl=ssl_ctx) as r:
            answer = await _answer(node, action, r)
            if r.status != 200:
                raise ApiError(
                    r.status if r.status >= 400 else 503,
                    str(answer.get("error", "failed")),
                    f"node {node} {action}: {answer.get('message')}",
                    retry_after=1,
                    leader=answer.get("leader"),
                )
            return dict(answer)

    def _check_server(self, url: URL, transport: asyncio.BaseTransport | None) -> None:
        """The server at `url` is, by its certificate, the node of this store the map
        puts there (a stale map or a reused address must not be sent a node's call)."""
        assert self._tls is not None
        where = f"{url.host}:{url.port}"
        node = next(
            (n for n, a in self._map().nodes.items() if _netloc(a.admin_url) == where), None
        )
        ssl_object = None if transport is None else transport.get_extra_info("ssl_object")
        try:
            answered = self._tls.verify_node(ssl_object)
        except PeerRefused as e:
            raise ApiError(
                502, "peer_refused", f"node {node} at {where}: {e.reason}: {e}", peer=node
            ) from None
        if answered != node:
            raise ApiError(
                502,
                "peer_refused",
                f"node {node} at {where}: the server's certificate names node {answered}",
                peer=node,
            )

    async def call_leader(self, shard: int, nodes: list[int], body: AdminBody) -> dict[str, Any]:
        """Call the body's action on the leader of `shard`, waiting for one to be elected."""
        for _ in range(50):
            for node in nodes:
                try:
                    return await self.call(node, body)
                except ApiError as e:
                    if e.status not in (307, 503):
                        raise
            await asyncio.sleep(0.2)
        raise ApiError(503, "no_leader", f"shard {shard} elected no leader; retry", retry_after=1)

    async def call_meta(self, body: AdminBody) -> dict[str, Any]:
        """Call the body's action on the leader of the metadata group."""
        return await self.call_leader(META_GROUP, sorted(self._map().nodes), body)


class _CheckedConnector(aiohttp.TCPConnector):
    """Checks who the server is on every connection handed to a request (new or pooled),
    before the request is sent on it."""

    def __init__(self, check: Callable[[URL, asyncio.BaseTransport | None], None]) -> None:
        super().__init__()
        self._check = check

    async def connect(
        self, req: aiohttp.ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> Connection:
        conn = await super().connect(req, traces, timeout)
        try:
            self._check(req.url, conn.transport)
        except BaseException:
            conn.close()
            raise
        return conn


def _netloc(url: str) -> str:
    u = URL(url)
    return f"{u.host}:{u.port}"


async def _answer(node: int, action: str, r: aiohttp.ClientResponse) -> dict[str, Any]:
    """A peer's answer: a JSON object of bounded size, or a 502 naming the peer."""
    body = bytearray()
    async for chunk in r.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:
            raise _bad_answer(node, action, r.status, f"more than {MAX_ANSWER_BYTES} bytes")
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise _bad_answer(node, action, r.status, f"not JSON ({e})") from None
    if not isinstance(answer, dict):
        raise _bad_answer(node, action, r.status, f"a JSON {type(answer).__name__}, not an object")
    return answer


def _bad_answer(node: int, action: str, status: int, what: str) -> ApiError:
    return ApiError(
        502, "bad_peer_answer", f"node {node} {action} answered {status} with {what}", peer=node
    )
