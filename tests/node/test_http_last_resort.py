"""The HTTP API's last resort: an exception no handler expected (a bug) answers a JSON
500 `internal` and is logged as one event naming the exception and where it was
raised; before, aiohttp answered a plain-text 500 and printed a traceback."""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from shardset_node.frontends.http import errors_as_json


async def _boom(request: web.Request) -> web.Response:
    raise RuntimeError("a bug\nover two lines")


def test_unexpected_exception_is_a_json_500_and_one_log_event() -> None:
    async def scenario() -> tuple[int, str, dict[str, str]]:
        app = web.Application(middlewares=[errors_as_json])
        app.router.add_get("/boom", _boom)
        async with TestClient(TestServer(app)) as client:
            r = await client.get("/boom")
            return r.status, r.content_type, await r.json()

    with structlog.testing.capture_logs() as logs:
        status, ctype, body = asyncio.run(scenario())
    assert (status, ctype, body["error"]) == (500, "application/json", "internal")
    assert "Traceback" not in body["message"]
    (event,) = [e for e in logs if e["event"] == "http_request_failed"]
    assert event["path"] == "/boom" and "RuntimeError: a bug" in event["error"]
    assert "test_http_last_resort.py" in event["raised_at"]
    assert "exc_info" not in event
