"""Errors the node turns into HTTP answers."""

from __future__ import annotations

from typing import Any


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
