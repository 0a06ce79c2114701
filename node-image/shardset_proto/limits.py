"""What a request may carry: the checks both client protocols (HTTP and wire) apply."""

from __future__ import annotations

from shardset_proto.commands import MAX_KEY_BYTES
from shardset_proto.errors import ApiError

MAX_IDEMPOTENCY_KEY = 128


def check_key(key: bytes) -> bytes:
    if not 0 < len(key) <= MAX_KEY_BYTES:
        raise ApiError(
            400, "bad_key", f"key must be 1 to {MAX_KEY_BYTES} bytes of UTF-8, got {len(key)}"
        )
    return key


def check_value(value: bytes, limit: int) -> bytes:
    if len(value) > limit:
        raise ApiError(413, "value_too_large", f"value is {len(value)} bytes; limit {limit}")
    return value


def check_idem(raw: bytes | None) -> bytes | None:
    if raw is not None and not 0 < len(raw) <= MAX_IDEMPOTENCY_KEY:
        raise ApiError(
            400,
            "bad_idempotency_key",
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters",
        )
    return raw
