"""The operator's calls to nodes (aiohttp, every call with a timeout).

Answers are parsed here, once, into the contract's typed reports
(`shardset_proto.status`); admin calls send the contract's typed bodies
(`shardset_proto.admin`), each knowing its action and URL.
"""

from __future__ import annotations

from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel, ValidationError

from shardset_proto import urls
from shardset_proto.admin import AdminBody, SetConsistency
from shardset_proto.status import NodeStatus, ShardMapView

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


class NodeClient:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

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
