"""The node's HTTP API (aiohttp): key-value operations under /v1, health, metrics.

Every answer is JSON and names the shard, the Raft index and the shard-map
epoch it was served at; a read also names the consistency mode and the replica
(node id) that served it, in its body and in X-Shardset-* headers. A request
that reaches a node which cannot serve it (a write, or a read whose mode needs the
shard's leader) is answered with a 307 redirect to the leader (and a JSON body
naming it), which the Shardset client follows; no leader known yet is a 503
with Retry-After. Bad input is a 4xx whose JSON names the problem.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from shardset_node.admin.dispatch import Admin
from shardset_node.core import Node
from shardset_node.frontends.openapi import OPENAPI
from shardset_node.kv import KvWrites
from shardset_node.reads import ReadPath
from shardset_node.status import shardmap_view, status
from shardset_proto import urls
from shardset_proto.errors import ApiError
from shardset_proto.limits import check_idem, check_key, check_value

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        headers = {"Location": e.location} if e.location else {}
        if e.retry_after is not None:
            headers["Retry-After"] = str(e.retry_after)
        return web.json_response(
            {"error": e.code, "message": str(e), **e.extra}, status=e.status, headers=headers
        )
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return web.json_response(
            {"error": e.reason.lower().replace(" ", "_"), "message": e.text or e.reason},
            status=e.status,
        )


def build_app(
    node: Node,
    kv: KvWrites,
    reads: ReadPath,
    admin: Admin,
    registry: CollectorRegistry,
    *,
    max_value_bytes: int,
) -> web.Application:
    """Routes over a node's parts: writes, reads, admin actions, status and metrics."""
    app = web.Application(middlewares=[errors_as_json], client_max_size=max_value_bytes + 4096)
    h = _Handlers(node, kv, reads, admin, registry, max_value_bytes)
    app.router.add_put(urls.KV + "{key}", h.put)
    app.router.add_get(urls.KV + "{key}", h.get)
    app.router.add_delete(urls.KV + "{key}", h.delete)
    app.router.add_post(urls.CAS + "{key}", h.cas)
    app.router.add_get(urls.SCAN, h.scan)
    app.router.add_get(urls.SHARDMAP, h.shardmap)
    app.router.add_get(urls.STATUS, h.status)
    app.router.add_get(urls.OPENAPI, h.openapi)
    app.router.add_post(urls.ADMIN + "{action}", h.admin)
    app.router.add_get(urls.HEALTHZ, h.healthz)
    app.router.add_get(urls.READYZ, h.readyz)
    app.router.add_get(urls.METRICS, h.metrics)
    return app


@dataclass(frozen=True)
class _Handlers:
    node: Node
    kv: KvWrites
    reads: ReadPath
    admin_actions: Admin
    registry: CollectorRegistry
    max_value_bytes: int

    async def put(self, request: web.Request) -> web.Response:
        key = _key(request)
        value = check_value(await request.read(), self.max_value_bytes)
        body = await self.kv.put(key, value, _idem(request), request.path_qs)
        return web.json_response(body)

    async def delete(self, request: web.Request) -> web.Response:
        body = await self.kv.delete(_key(request), _idem(request), request.path_qs)
        return web.json_response(body)

    async def cas(self, request: web.Request) -> web.Response:
        key = _key(request)
        raw = await _json_object(request)
        for field in ("expected", "value"):
            if field not in raw:
                raise ApiError(400, "missing_field", f"JSON body needs {field!r} (base64 or null)")
        expected = _b64field(raw, "expected")
        value = _b64field(raw, "value")
        body = await self.kv.cas(key, expected, value, _idem(request), request.path_qs)
        return web.json_response(body)

    async def get(self, request: web.Request) -> web.Response:
        key = _key(request)
        mode = request.query.get("consistency")
        staleness = _int_param(request, "max_staleness_ms")
        token = _int_param(request, "min_index") or 0
        body = await self.reads.get(key, mode, staleness, token, request.path_qs)
        value = body["value"]
        status = 200 if value is not None else 404
        if value is not None:
            body["value"] = base64.b64encode(value).decode()
        return web.json_response(body, status=status, headers=_read_headers(body))

    async def scan(self, request: web.Request) -> web.Response:
        shard = _int_param(request, "shard")
        if shard is None:
            raise ApiError(400, "missing_parameter", "scan needs ?shard=N (the client fans out)")
        limit = _int_param(request, "limit") or 1000
        body = await self.reads.scan(
            shard,
            request.query.get("start", ""),
            request.query.get("end"),
            limit,
            request.query.get("consistency"),
            _int_param(request, "max_staleness_ms"),
            _int_param(request, "min_index") or 0,
            request.path_qs,
        )
        return web.json_response(body, headers=_read_headers(body))

    async def shardmap(self, request: web.Request) -> web.Response:
        return web.json_response(shardmap_view(self.node).to_json())

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(status(self.node, self.reads).to_json())

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(OPENAPI)

    async def admin(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        action = request.match_info["action"]
        return web.json_response(await self.admin_actions.run(action, body))

    async def healthz(self, request: web.Request) -> web.Response:
        # Fails once the Raft loop died or is stuck: the kubelet restarts the node.
        problems = self.node.liveness_problems()
        if problems:
            body = {"status": "failed", "node": self.node.id, "problems": problems}
            return web.json_response(body, status=503)
        return web.json_response({"status": "ok", "node": self.node.id})

    async def readyz(self, request: web.Request) -> web.Response:
        problems = self.node.readiness_problems()
        if problems:
            return web.json_response({"status": "not_ready", "problems": problems}, status=503)
        return web.json_response({"status": "ready"})

    async def metrics(self, request: web.Request) -> web.Response:
        data = generate_latest(self.registry)
        return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _read_headers(body: dict[str, Any]) -> dict[str, str]:
    """Every read says, in headers as in its body, which mode and which replica served it
    and the Raft index of the state it was read from."""
    return {
        "X-Shardset-Consistency": str(body["consistency"]),
        "X-Shardset-Replica": str(body["replica"]),
        "X-Shardset-Index": str(body["index"]),
    }


def _key(request: web.Request) -> bytes:
    return check_key(request.match_info["key"].encode())


def _idem(request: web.Request) -> bytes | None:
    raw = request.headers.get("Idempotency-Key")
    return None if raw is None else check_idem(raw.encode())


def _int_param(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "bad_parameter", f"{name} must be an integer, got {raw!r}") from None
    if value < 0:
        raise ApiError(400, "bad_parameter", f"{name} must not be negative, got {value}")
    return value


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        raw = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "bad_json", "request body is not valid JSON") from None
    if not isinstance(raw, dict):
        raise ApiError(400, "bad_json", "request body must be a JSON object")
    return raw


def _b64field(raw: dict[str, Any], field: str) -> bytes | None:
    value = raw.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(400, "bad_field", f"{field!r} must be base64 text or null")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "bad_field", f"{field!r} is not valid base64") from None
