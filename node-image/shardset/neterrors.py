"""Connection failures said in words: "connection refused", not `ClientConnectorError`.

The client and the CLI put these after "cannot reach node at URL: ", so a user reads
the cause (refused, timed out, name not found) instead of an exception's class name.
"""

from __future__ import annotations

import os

import aiohttp


def describe(error: BaseException) -> str:
    """The cause of a failed connection or request, in lower-case words."""
    if isinstance(error, aiohttp.ClientConnectorError):
        return _os_reason(error.os_error)
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return "the node closed the connection without answering"
    if isinstance(error, TimeoutError):  # aiohttp's timeouts are TimeoutErrors too
        return "no answer in time"
    if isinstance(error, aiohttp.ClientResponseError):
        return f"HTTP {error.status} {error.message}".rstrip()
    if isinstance(error, OSError) and error.strerror:
        return _os_reason(error)
    return str(error) or error.__class__.__name__


def _os_reason(error: OSError) -> str:
    # asyncio's "Connect call failed ('127.0.0.1', 9)" hides the errno's own words.
    reason = (os.strerror(error.errno) if error.errno else error.strerror) or str(error)
    return reason[:1].lower() + reason[1:]
