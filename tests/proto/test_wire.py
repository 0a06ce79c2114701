"""The wire protocol's framing and hello (shardset_proto.framing, .wire), without a node."""

from __future__ import annotations

import itertools

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardset_proto import framing, wire
from shardset_proto.errors import ApiError
from shardset_proto.limits import MAX_REQUESTS_PER_FRAME


@given(
    payloads=st.lists(st.binary(max_size=300), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=7000), max_size=10),
)
def test_frames_survive_any_split_of_the_stream(payloads: list[bytes], cuts: list[int]) -> None:
    """TCP delivers a stream in arbitrary pieces: every frame comes out whole, in order,
    exactly once, however the bytes were cut."""
    stream = b"".join(framing.frame(p) for p in payloads)
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    frames = framing.FrameReader(limit=framing.MAX_CLIENT_FRAME)
    out: list[bytes] = []
    for a, b in itertools.pairwise(bounds):
        out.extend(frames.feed(stream[a:b]))
    assert out == payloads


def test_an_oversized_frame_is_refused_before_it_is_buffered() -> None:
    frames = framing.FrameReader(limit=1024)
    with pytest.raises(framing.FrameError, match="2048 bytes exceeds the limit of 1024"):
        frames.feed((2048).to_bytes(4, "big") + b"x")


def test_hello_round_trip_and_bad_magic() -> None:
    frames = framing.FrameReader(limit=framing.MAX_CLIENT_FRAME)
    (payload,) = frames.feed(wire.hello(wire.VERSION, 7))
    assert wire.parse_hello(payload) == (wire.VERSION, 7)
    with pytest.raises(framing.FrameError, match="magic"):
        wire.parse_hello(b"SHRD" + payload[4:])
    with pytest.raises(framing.FrameError, match="hello of 3 bytes"):
        wire.parse_hello(b"SHK")


def test_a_batch_is_a_msgpack_array_of_requests() -> None:
    """What the client sends is what the module doc says: [id, op, key, ...] items."""
    batch = [[1, "put", "k", b"v", None], [2, "get", "k", None, None, 0]]
    frames = framing.FrameReader(limit=framing.MAX_CLIENT_FRAME)
    (payload,) = frames.feed(wire.encode_batch(batch))
    assert msgpack.unpackb(payload, raw=False) == batch


def test_encode_batches_splits_by_count_and_bytes_in_order() -> None:
    """The client's and the node's frames stay within the per-frame request limit, and
    large items spread over frames; the order is kept."""
    wire_codec = wire
    items = [[i, "get", f"k{i}", None, None, 0] for i in range(2 * MAX_REQUESTS_PER_FRAME + 5)]
    frames = wire_codec.encode_batches(items, MAX_REQUESTS_PER_FRAME)
    batches = [wire_codec.decode_batch(f[4:]) for f in frames]
    assert [len(b) for b in batches] == [MAX_REQUESTS_PER_FRAME, MAX_REQUESTS_PER_FRAME, 5]
    assert [x for b in batches for x in b] == items
    lengths = [wire_codec.batch_length(f[framing.HEADER_SIZE :]) for f in frames]
    assert lengths == [len(b) for b in batches]
    big = [[i, "put", "k", b"x" * 600, None] for i in range(4)]
    assert len(wire_codec.encode_batches(big, 100, max_bytes=1000)) == 4


def test_auth_request_and_answers() -> None:
    """The auth request is [id, "auth", token]; its answer gives the user and role, or
    the refusal as the ApiError the node sent (401 naming why), or a bad answer 502."""
    request = [1, *wire.auth("sst_token")]
    assert msgpack.unpackb(msgpack.packb(request)) == [1, "auth", "sst_token"]
    assert len(request) == wire.ARITY[wire.Op.AUTH]
    assert wire.parse_auth_answer(200, wire.auth_answer("app", "read")) == ("app", "read")
    refused = {"error": "unauthenticated", "message": "unknown token: no user has it"}
    with pytest.raises(ApiError) as e:
        wire.parse_auth_answer(401, refused)
    assert (e.value.status, e.value.code, str(e.value)) == (401, *refused.values())
    for status, body in ((200, {"user": "app"}), (200, ["not", "a", "map"])):
        with pytest.raises(ApiError) as e:
            wire.parse_auth_answer(status, body)
        assert e.value.status == 502
