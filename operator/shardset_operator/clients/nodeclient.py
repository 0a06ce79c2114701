"""The operator's calls to nodes (aiohttp, every call with a timeout)."""

from __future__ import annotations

from typing import Any

import aiohttp

STATUS_TIMEOUT_S = 3.0
ADMIN_TIMEOUT_S = 10.0


class NodeCallError(RuntimeError):
    """A node did not answer as hoped; the message says which node, what and why.

    `status` and `code` are the node's HTTP status and error code when it answered."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.leader_url: str | None = None  # a 307's leader, to retry there


class NodeClient:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def status(self, url: str) -> dict[str, Any]:
        return await self._call("GET", f"{url}/v1/status", None, STATUS_TIMEOUT_S)

    async def set_consistency(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", f"{url}/v1/admin/consistency", body, ADMIN_TIMEOUT_S)

    async def shardmap(self, url: str) -> dict[str, Any]:
        return await self._call("GET", f"{url}/v1/shardmap", None, STATUS_TIMEOUT_S)

    async def admin(self, url: str, action: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST /v1/admin/<action>; follows one redirect to the leader the node names."""
        try:
            return await self._call("POST", f"{url}/v1/admin/{action}", body, ADMIN_TIMEOUT_S)
        except NodeCallError as e:
            if e.status != 307 or not e.leader_url:
                raise
            leader = e.leader_url
        return await self._call("POST", f"{leader}/v1/admin/{action}", body, ADMIN_TIMEOUT_S)

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
            ) as rsp:
                payload = await rsp.json(content_type=None)
                if rsp.status >= 300:
                    raise _answer_error(method, url, rsp.status, payload)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
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
