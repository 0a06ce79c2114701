"""The operator's calls to nodes (aiohttp, every call with a timeout)."""

from __future__ import annotations

from typing import Any

import aiohttp

STATUS_TIMEOUT_S = 3.0
ADMIN_TIMEOUT_S = 10.0


class NodeCallError(RuntimeError):
    """A node did not answer as hoped; the message says which node, what and why."""


class NodeClient:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def status(self, url: str) -> dict[str, Any]:
        return await self._call("GET", f"{url}/v1/status", None, STATUS_TIMEOUT_S)

    async def set_consistency(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", f"{url}/v1/admin/consistency", body, ADMIN_TIMEOUT_S)

    async def _call(
        self, method: str, url: str, body: dict[str, Any] | None, timeout: float
    ) -> dict[str, Any]:
        try:
            async with self.session.request(
                method, url, json=body, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as rsp:
                payload = await rsp.json(content_type=None)
                if rsp.status >= 400:
                    detail = payload.get("message") if isinstance(payload, dict) else payload
                    raise NodeCallError(f"{method} {url}: HTTP {rsp.status}: {detail}")
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise NodeCallError(f"{method} {url}: {type(e).__name__}: {e}") from e
        if not isinstance(payload, dict):
            raise NodeCallError(f"{method} {url}: expected a JSON object, got {payload!r}")
        return payload
