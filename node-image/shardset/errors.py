"""The client's error type (its own module so shardset.tlserrors can extend it)."""

from __future__ import annotations

from typing import Any


class ShardsetError(Exception):
    """A request failed for good; `status` and `body` say why."""

    def __init__(self, message: str, status: int = 0, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body or {}
