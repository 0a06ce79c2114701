"""Admin calls from this node to other nodes' HTTP APIs (`POST /v1/admin/<action>`).

A call addressed to this node itself goes straight to the local admin handler, so an
orchestration (a split, a recovery) can name every replica alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from shardset_node.config import META_GROUP, REQUEST_TIMEOUT
from shardset_proto.admin import AdminBody
from shardset_proto.errors import ApiError
from shardset_proto.shardmap import ShardMap

LocalAdmin = Callable[[AdminBody], Awaitable[dict[str, Any]]]


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
        url = self._map().nodes[node].api + body.path()
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
            answer = await r.json(content_type=None)
            if r.status != 200:
                raise ApiError(
                    r.status if r.status >= 400 else 503,
                    answer.get("error", "failed"),
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
