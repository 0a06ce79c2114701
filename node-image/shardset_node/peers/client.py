"""Admin calls from this node to other nodes' HTTP APIs (`POST /v1/admin/<action>`).

A call addressed to this node itself goes straight to the local admin handler, so an
orchestration (a split, a recovery) can name every replica alike.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from shardset_node.config import META_GROUP, REQUEST_TIMEOUT
from shardset_proto.admin import AdminBody
from shardset_proto.errors import ApiError
from shardset_proto.shardmap import ShardMap

LocalAdmin = Callable[[AdminBody], Awaitable[dict[str, Any]]]
# The largest answer read from a peer: admin answers are small JSON objects (the bulk of
# a slot move travels in requests), so this only bounds what a broken peer can cost.
MAX_ANSWER_BYTES = 16 * 1024 * 1024


class PeerClient:
    def __init__(self, node_id: int, shard_map: Callable[[], ShardMap]) -> None:
        self.node_id = node_id
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
        if self._http is None:
            self._http = aiohttp.ClientSession()  # one pool of connections for every call
        action = body.action
        address = self._map().nodes.get(node)
        if address is None:  # a stale list of replicas: retryable, like a node that is down
            raise ApiError(
                503,
                "peer_unreachable",
                f"node {node} {action}: not in the shard map",
                retry_after=1,
            )
        url = address.api + body.path()
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
        async with self._http.post(url, json=body, timeout=limit) as r:
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
