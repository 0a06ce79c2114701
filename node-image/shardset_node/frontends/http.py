"""The node's HTTP API (aiohttp): key-value operations under /v1, health, metrics.

Every answer is JSON and names the shard, the Raft index and the shard-map
epoch it was served at; a read also names the consistency mode and the replica
(node id) that served it, in its body and in X-Shardset-* headers. A request
that reaches a node which cannot serve it (a write, or a read whose mode needs the
shard's leader) is answered with a 307 redirect to the leader (and a JSON body
naming it), which the Shardset client follows; no leader known yet is a 503
with Retry-After. Bad input is a 4xx whose JSON names the problem.

A node with TLS (`auth`: shardset_node.auth) checks every request but health,
readiness, metrics and the OpenAPI document: a client certificate or a bearer token
(`Authorization: Bearer <token>`) allowed the route's action, on the request's key or
scan range (401 `unauthenticated`, 403 `forbidden`, naming what failed). Its admin
actions are served apart, on the admin port (`make_admin_app`), to client certificates
holding store.admin only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from shardset_node.admin.dispatch import Admin
from shardset_node.auth import Authenticator, AuthError, Principal
from shardset_node.config import HttpLimits
from shardset_node.core import Node
from shardset_node.frontends.openapi import openapi_document
from shardset_node.frontends.unexpected import cause
from shardset_node.kv import KvWrites
from shardset_node.reads import ReadPath
from shardset_node.status import shardmap_view, status
from shardset_proto import urls
from shardset_proto.errors import ApiError
from shardset_proto.identity import Action
from shardset_proto.limits import (
    MAX_INTEGER,
    MAX_SCAN_LIMIT,
    check_idem,
    check_key,
    check_value,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Where the guard leaves the request's authenticated Principal (absent on an insecure
# node and on the open routes).
PRINCIPAL = web.RequestKey("principal", Principal)

log = structlog.get_logger(__name__)

# The longest request line and header aiohttp reads: room for every request the
# OpenAPI document allows (a 1,024-byte key percent-encoded is 3 KiB, a scan's start and
# end as much again); a longer one is a 400 (aiohttp answers it in plain text).
MAX_LINE_BYTES = 16 * 1024


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        headers = {"Location": e.location} if e.location else {}
        if e.retry_after is not None:
            headers["Retry-After"] = str(e.retry_after)
        resp = web.json_response(
            {"error": e.code, "message": str(e), **e.extra}, status=e.status, headers=headers
        )
        if e.status == 408:
            resp.force_close()  # the rest of a body that timed out is not read
        return resp
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return web.json_response(
            {"error": e.reason.lower().replace(" ", "_"), "message": e.text or e.reason},
            status=e.status,
        )
    except Exception as e:  # the last resort: a bug answers JSON, logged on one line
        log.error("http_request_failed", method=request.method, path=request.path, **cause(e))
        return web.json_response(
            {"error": "internal", "message": "internal error; the node logged it"}, status=500
        )


class _OneLineLogger(logging.Logger):
    """aiohttp's server logger: a request it cannot parse (a request line over the
    limit, bad framing) is one warning, not a traceback in the node's JSON log."""

    def exception(self, msg: object, *args: object, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        error = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else str(msg)
        log.warning("http_unparsable_request", error=error[:300])

    def error(self, msg: object, *args: object, **kwargs: Any) -> None:
        log.warning("http_server_error", error=(str(msg) % args if args else str(msg))[:300])


def runner(app: web.Application, limits: HttpLimits) -> web.AppRunner:
    """The app's runner with the node's timeouts: a connection idle between requests,
    or whose request head has not fully arrived, for `keepalive_timeout` is closed (aiohttp
    arms that timer from the connection's start); request bodies are bounded by the
    handlers (`body_timeout`)."""
    return web.AppRunner(
        app,
        access_log=None,
        keepalive_timeout=limits.keepalive_timeout,
        max_line_size=MAX_LINE_BYTES,
        max_field_size=MAX_LINE_BYTES,
        lingering_time=2.0,  # s reading the unread rest of a body refused (e.g. 408)
        logger=_OneLineLogger("aiohttp.server"),
    )


# What each guarded route needs, by method and path; every other route is open
# (health, readiness, metrics, the OpenAPI document) or a 404.
_KEY_PATH, _CAS_PATH, _ADMIN_PATH = urls.KV + "{key}", urls.CAS + "{key}", urls.ADMIN + "{action}"
_ACTIONS: dict[tuple[str, str], Action] = {
    ("PUT", _KEY_PATH): Action.KV_WRITE,
    ("DELETE", _KEY_PATH): Action.KV_WRITE,
    ("POST", _CAS_PATH): Action.KV_WRITE,
    ("GET", _KEY_PATH): Action.KV_READ,
    ("GET", urls.SCAN): Action.KV_READ,
    ("GET", urls.SHARDMAP): Action.STORE_READ,
    ("GET", urls.STATUS): Action.STORE_READ,
    ("POST", _ADMIN_PATH): Action.STORE_ADMIN,
}


def make_app(
    node: Node,
    kv: KvWrites,
    reads: ReadPath,
    admin: Admin,
    registry: CollectorRegistry,
    *,
    max_value_bytes: int,
    limits: HttpLimits | None = None,
    auth: Authenticator | None = None,
    admin_routes: bool = True,
) -> web.Application:
    """The client API over a node's parts: writes, reads, status and metrics, and the
    admin actions unless `admin_routes` is False (a node with TLS serves them on its
    admin port instead: make_admin_app; here they are then 404). With `auth` every route
    but health, readiness, metrics and the OpenAPI document needs a credential allowed
    the route's action; without it (an insecure node) nothing is checked."""
    middlewares: list[Middleware] = [errors_as_json]
    if auth is not None:
        middlewares.append(_guard(auth))
    app = web.Application(middlewares=middlewares, client_max_size=max_value_bytes + 4096)
    limits = limits or HttpLimits()
    h = _Handlers(node, admin, limits, kv, reads, registry, max_value_bytes,
                  openapi_document(secure=auth is not None, admin=admin_routes))  # fmt: skip
    app.router.add_put(_KEY_PATH, h.put)
    app.router.add_get(_KEY_PATH, h.get)
    app.router.add_delete(_KEY_PATH, h.delete)
    app.router.add_post(_CAS_PATH, h.cas)
    app.router.add_get(urls.SCAN, h.scan)
    app.router.add_get(urls.SHARDMAP, h.shardmap)
    app.router.add_get(urls.STATUS, h.status)
    app.router.add_get(urls.OPENAPI, h.openapi)
    if admin_routes:
        app.router.add_post(_ADMIN_PATH, h.admin)
    app.router.add_get(urls.HEALTHZ, h.healthz)
    app.router.add_get(urls.READYZ, h.readyz)
    app.router.add_get(urls.METRICS, h.metrics)
    return app


def make_admin_app(
    node: Node,
    admin: Admin,
    *,
    auth: Authenticator,
    max_value_bytes: int,
    limits: HttpLimits | None = None,
) -> web.Application:
    """The admin port's API: the admin actions (and /healthz) only. Every admin request
    needs a client certificate whose identity holds store.admin: the operator, the
    store's nodes, or an admin-role user of the table; a bearer token is never enough."""
    app = web.Application(
        middlewares=[errors_as_json, _guard(auth)], client_max_size=max_value_bytes + 4096
    )
    h = _AdminHandlers(node, admin, limits or HttpLimits())
    app.router.add_post(_ADMIN_PATH, h.admin)
    app.router.add_get(urls.HEALTHZ, h.healthz)
    return app


# The old name (main.py and tests call it): the client API with its admin routes.
build_app = make_app


def _guard(auth: Authenticator) -> Middleware:
    """The middleware that authenticates and authorizes every request but the open ones
    (health, readiness, metrics, the OpenAPI document) and unknown paths (404). The
    admin actions take a client certificate only, wherever they are served."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        path = resource.canonical if resource is not None else ""
        method = "GET" if request.method == "HEAD" else request.method  # HEAD is a GET
        action = _ACTIONS.get((method, path))
        if action is None:
            return await handler(request)
        tls = request.transport.get_extra_info("ssl_object") if request.transport else None
        header = request.headers.get("Authorization")
        try:
            if action == Action.STORE_ADMIN:
                principal = auth.certificate_only(tls, header)
            else:
                principal = auth.authenticate(tls, header)
            key = request.match_info.get("key")
            scan = (request.query.get("start", ""), request.query.get("end"))
            auth.authorize(principal, action, key, scan if path == urls.SCAN else None)
        except AuthError as e:
            log.warning(
                "http_request_refused", status=e.status, reason=str(e), remote=request.remote,
                claimed=e.claimed, method=request.method, path=request.path[:200],
            )  # fmt: skip
            # RFC 9110: a 401 names the scheme that would do (a certificate is no scheme).
            challenge = {"WWW-Authenticate": 'Bearer realm="shardset"'}
            headers = challenge if e.status == 401 and action != Action.STORE_ADMIN else {}
            return web.json_response(e.body(), status=e.status, headers=headers)
        request[PRINCIPAL] = principal
        return await handler(request)

    return guard


@dataclass(frozen=True)
class _AdminHandlers:
    node: Node
    admin_actions: Admin
    limits: HttpLimits

    async def admin(self, request: web.Request) -> web.Response:
        body = await _json_object(request, self.limits)
        action = request.match_info["action"]
        return web.json_response(await self.admin_actions.run(action, body))

    async def healthz(self, request: web.Request) -> web.Response:
        # Fails once the Raft loop died or is stuck: the kubelet restarts the node.
        problems = self.node.liveness_problems()
        if problems:
            body = {"status": "failed", "node": self.node.id, "problems": problems}
            return web.json_response(body, status=503)
        return web.json_response({"status": "ok", "node": self.node.id})


@dataclass(frozen=True)
class _Handlers(_AdminHandlers):
    kv: KvWrites
    reads: ReadPath
    registry: CollectorRegistry
    max_value_bytes: int
    document: dict[str, Any]

    async def put(self, request: web.Request) -> web.Response:
        key = _key(request)
        value = check_value(await _body(request, self.limits), self.max_value_bytes)
        body = await self.kv.put(key, value, _idem(request), request.path_qs)
        return web.json_response(body)

    async def delete(self, request: web.Request) -> web.Response:
        body = await self.kv.delete(_key(request), _idem(request), request.path_qs)
        return web.json_response(body)

    async def cas(self, request: web.Request) -> web.Response:
        key = _key(request)
        raw = await _json_object(request, self.limits)
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
        limit = _int_param(request, "limit", MAX_SCAN_LIMIT, least=1) or 1000
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
        return web.json_response(self.document)

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
    key = request.match_info["key"]
    if "%" in key:
        # The URL decoder leaves percent-escapes of bytes that are not UTF-8 as they are
        # (`%FF` stays the three characters): such a key would be stored under another
        # key. Refused, as the wire protocol refuses it.
        raw = request.raw_path.partition("?")[0].rpartition("/")[2]
        try:
            unquote_to_bytes(raw).decode()
        except UnicodeDecodeError:
            raise ApiError(
                400, "bad_key", f"key {raw[:200]} is not UTF-8 (keys are UTF-8 text)"
            ) from None
    return check_key(key.encode())


def _idem(request: web.Request) -> bytes | None:
    raw = request.headers.get("Idempotency-Key")
    return None if raw is None else check_idem(raw.encode())


def _int_param(
    request: web.Request, name: str, most: int = MAX_INTEGER, least: int = 0
) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 20):
        raise ApiError(
            400, "bad_parameter", f"{name} must be an integer from {least} to {most}, got "
            f"{raw[:40]!r}", parameter=name,
        )  # fmt: skip
    value = int(raw)
    if not least <= value <= most:
        raise ApiError(
            400, "bad_parameter", f"{name} must be from {least} to {most}, got {value}",
            parameter=name,
        )  # fmt: skip
    return value


async def _body(request: web.Request, limits: HttpLimits) -> bytes:
    """The request's body, decoded from its Content-Encoding; a 4xx naming what is wrong
    when it cannot be read, or does not arrive within the body timeout."""
    try:
        async with asyncio.timeout(limits.body_timeout):
            return await request.read()
    except TimeoutError:
        raise ApiError(
            408, "body_timeout", f"the request body did not arrive within {limits.body_timeout}s"
        ) from None
    except (HttpProcessingError, web.RequestPayloadError) as e:
        encoding = request.headers.get("Content-Encoding", "identity")
        reason = " ".join(str(e).split())  # aiohttp's message spans lines
        raise ApiError(
            400, "bad_body", f"the body cannot be read (Content-Encoding {encoding[:40]!r}): "
            f"{reason[:200]}",
        ) from None  # fmt: skip


async def _json_object(request: web.Request, limits: HttpLimits) -> dict[str, Any]:
    data = await _body(request, limits)
    charset = request.charset or "utf-8"
    try:
        raw = json.loads(data.decode(charset))
    except LookupError:
        raise ApiError(
            415, "bad_charset", f"unknown charset {charset[:40]!r}; send JSON as UTF-8"
        ) from None
    except UnicodeDecodeError:
        raise ApiError(400, "bad_json", f"request body is not valid {charset}") from None
    except RecursionError:
        raise ApiError(400, "bad_json", "request body is JSON nested too deeply") from None
    except json.JSONDecodeError as e:
        raise ApiError(400, "bad_json", f"request body is not valid JSON: {e}") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise ApiError(400, "bad_json", f"request body is not acceptable JSON: {e}") from None
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
