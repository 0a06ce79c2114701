"""The error answer of the node's API, over HTTP and over the wire protocol alike.

The node raises ApiError; the answer is its `status` with the JSON body `body()`:
``{"error": code, "message": ..., <extra fields>}`` (a 307 names `leader` and
`leader_url`, a 409 the map's `epoch`, ...). Clients read the status and those fields.
"""

from __future__ import annotations

from typing import Any

# The codes of the security refusals (docs/security.md), over HTTP and the wire alike:
# 401: no credential, an unknown or revoked token, a certificate of another store or of
# no user (the message names which); 403: the role lacks the action, or the key or scan
# range is outside the user's prefixes (the message names the role, action and key).
UNAUTHENTICATED = "unauthenticated"
FORBIDDEN = "forbidden"


class ApiError(Exception):
    """An HTTP error with a machine-readable code and a message naming the problem."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        location: str | None = None,
        retry_after: int | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.location = location
        self.retry_after = retry_after
        self.extra = extra

    def body(self) -> dict[str, Any]:
        """The answer's JSON body (Retry-After is a header over HTTP)."""
        return {"error": self.code, "message": str(self), **self.extra}
