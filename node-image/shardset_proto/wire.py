"""The binary client protocol: key-value requests as msgpack over one TCP connection.

HTTP costs a Python-level parse, a request object and a JSON body per operation on
both ends, which on a small machine is most of a put's CPU (docs/performance.md). This
protocol carries the same operations, with the same answers, pipelined and batched:

* A node with TLS serves it on its own **wire port** (`nodes[n].wire` in the shard
  map), over TLS. An insecure node serves it on its **peer port**, telling a client
  from a peer by the first frame (shardset_proto.framing: CLIENT_MAGIC); the shard
  map's `NodeAddress.wire_addr` gives whichever applies.
* Framing as in the transport (shardset_proto.framing). The client's hello is
  ``b"SHKV" | uint16 version | uint64 0``; the node answers with its own
  (``b"SHKV" | version | node id``) and closes when the versions differ.
* Every later frame is a msgpack array of requests (client to node) or of answers
  (node to client). Everything queued during one event-loop iteration leaves in one
  frame, so many clients sharing a connection cost one write and one read per batch.
* Authentication (a node with TLS): a connection whose TLS client certificate names an
  identity of the store (a user of its user table, a node, the operator) is that
  identity. A client without one sends ``[id, "auth", token]`` before its other
  requests, as (the start of) its first frame; the node answers
  ``[id, 200, {"user": name, "role": role}]``, or ``[id, 401, {"error":
  "unauthenticated", "message": ...}]`` and closes the connection. Every request of an
  unauthenticated connection is answered 401 (the message says why); a request the
  role or the key prefixes do not allow, 403 (shardset_proto.errors). The node checks
  a user's connection against its current user table before every frame of requests:
  a user deleted (or given a new token) loses its open connections too. An insecure
  node answers an auth request 400 `auth_disabled`.
* Requests, each ``[id, op, key, ...]`` with `id` a client-chosen unsigned integer:

  ``[id, "put", key, value, idempotency_key | nil]``
  ``[id, "delete", key, idempotency_key | nil]``
  ``[id, "cas", key, expected | nil, value | nil, idempotency_key | nil]``
  ``[id, "get", key, consistency | nil, max_staleness_ms | nil, min_index]``
  ``[id, "auth", token]``

* Answers, in any order: ``[id, status, body]``. `status` and `body` are what the HTTP
  API would answer (200, 404 for a missing key, 307 with `leader` naming the node to
  ask, 409, 503, ...), except that a read's `value` is raw bytes, not base64.
* A frame carries at most `limits.MAX_REQUESTS_PER_FRAME` requests (clients split larger
  batches: `encode_batches`); a larger one is refused unread with the answer
  ``[0, 413, {"error": "frame_too_large", "limit": ...}]`` and the connection lives on.
  A node stops reading a connection that holds too many requests or bytes in flight,
  and closes one that idles, or leaves a frame half-sent, too long (WireLimits).
* A frame that is not a msgpack array, or a request of the wrong shape, gets a 400
  naming what is wrong (with id 0 when no id can be read); framing errors close the
  connection.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import msgpack  # type: ignore[import-untyped]  # ships no type information

from shardset_proto import framing
from shardset_proto.errors import ApiError

VERSION = 1


class Op(StrEnum):
    PUT = "put"
    DELETE = "delete"
    CAS = "cas"
    GET = "get"
    AUTH = "auth"


# Fields of each request, its id and op included.
ARITY: dict[str, int] = {Op.PUT: 5, Op.DELETE: 4, Op.CAS: 6, Op.GET: 6, Op.AUTH: 3}


class BatchError(ValueError):
    """A frame's payload is not a msgpack array."""


def hello(version: int, node_id: int) -> bytes:
    """A wire hello frame (a client says node id 0)."""
    return framing.hello(framing.CLIENT_MAGIC, version, node_id)


def parse_hello(payload: bytes) -> tuple[int, int]:
    """(version, node id) from a wire hello frame's payload."""
    _, version, node_id = framing.parse_hello(payload, (framing.CLIENT_MAGIC,))
    return version, node_id


# --- requests, without their id (the connection numbers them) ----------------------
def put(key: str, value: bytes, idem: str | None) -> list[Any]:
    return [Op.PUT.value, key, value, idem]


def delete(key: str, idem: str | None) -> list[Any]:
    return [Op.DELETE.value, key, idem]


def cas(key: str, expected: bytes | None, value: bytes | None, idem: str | None) -> list[Any]:
    return [Op.CAS.value, key, expected, value, idem]


def get(key: str, consistency: str | None, max_staleness_ms: int | None, token: int) -> list[Any]:
    return [Op.GET.value, key, consistency, max_staleness_ms, token]


def auth(token: str) -> list[Any]:
    """The request that authenticates a connection by bearer token (send it first)."""
    return [Op.AUTH.value, token]


def auth_answer(user: str, role: str) -> dict[str, Any]:
    """The body of a successful auth answer (status 200)."""
    return {"user": user, "role": role}


def parse_auth_answer(status: int, body: Any) -> tuple[str, str]:
    """(user, role) from an auth answer; the refusal as an ApiError (401
    `unauthenticated` naming why; the node closes the connection after it)."""
    if not isinstance(body, dict):
        raise ApiError(502, "bad_answer", f"auth answer body is not a map: {body!r:.100}")
    if status != 200:
        code = body.get("error", "unauthenticated")
        raise ApiError(status, str(code), str(body.get("message", "authentication refused")))
    user, role = body.get("user"), body.get("role")
    if not isinstance(user, str) or not isinstance(role, str):
        raise ApiError(502, "bad_answer", f"auth answer lacks user and role: {body!r:.100}")
    return user, role


# --- batches -----------------------------------------------------------------------
def encode_batch(items: list[list[Any]]) -> bytes:
    """One frame holding `items` (requests or answers)."""
    return framing.frame(msgpack.packb(items, use_bin_type=True))


def encode_batches(
    items: list[list[Any]], max_items: int, max_bytes: int = framing.MAX_CLIENT_FRAME // 2
) -> list[bytes]:
    """`items` as frames of at most `max_items` each and, where items allow, at most
    `max_bytes` of payload (an item larger than that goes alone), in order."""
    packer = msgpack.Packer(use_bin_type=True)
    frames: list[bytes] = []
    parts: list[bytes] = []
    size = 0
    for item in items:
        packed = packer.pack(item)
        if parts and (len(parts) >= max_items or size + len(packed) > max_bytes):
            frames.append(framing.frame(packer.pack_array_header(len(parts)) + b"".join(parts)))
            parts, size = [], 0
        parts.append(packed)
        size += len(packed)
    if parts:
        frames.append(framing.frame(packer.pack_array_header(len(parts)) + b"".join(parts)))
    return frames


def batch_length(payload: bytes) -> int:
    """How many items a frame's payload says it holds, read from its array header
    alone (so a frame with too many is refused without decoding it)."""
    unpacker = msgpack.Unpacker()
    unpacker.feed(payload[:5])  # the longest array header (array 32)
    try:
        return int(unpacker.read_array_header())
    except (ValueError, msgpack.OutOfData, msgpack.StackError) as e:
        raise BatchError(f"not msgpack, or not an array (a frame is an array): {e}") from None


def decode_batch(payload: bytes) -> list[Any]:
    """The requests or answers of one frame's payload."""
    try:
        batch = msgpack.unpackb(payload, raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise BatchError(f"not msgpack: {e}") from None
    if not isinstance(batch, list):
        raise BatchError("a frame is an array")
    return batch
