"""What a request may carry: the checks both client protocols (HTTP and wire) apply."""

from __future__ import annotations

from shardset_proto.commands import MAX_KEY_BYTES
from shardset_proto.errors import ApiError

MAX_IDEMPOTENCY_KEY = 128
MAX_INTEGER = 2**63 - 1  # an integer parameter (index, shard, bound) fits SQLite's integer
MAX_SCAN_LIMIT = 10_000  # keys one scan request may ask for
# Requests one wire frame may carry. A node serves a frame's requests as one batch, so
# the bound keeps the loop's work per frame small; a client splits larger batches
# (shardset_proto.wire.encode_batches), and the node refuses a larger frame, naming it.
MAX_REQUESTS_PER_FRAME = 1024


def check_requests_per_frame(count: int) -> None:
    if count > MAX_REQUESTS_PER_FRAME:
        raise ApiError(
            413,
            "frame_too_large",
            f"a frame carries {count} requests; the limit is {MAX_REQUESTS_PER_FRAME} per "
            "frame (split the batch)",
            limit=MAX_REQUESTS_PER_FRAME,
        )


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
