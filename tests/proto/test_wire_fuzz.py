"""Fuzzing the binary client protocol's codec (shardset_proto.wire), as the wire server
uses it: valid batches of requests round-trip; arbitrary or damaged payloads raise
BatchError and nothing else; lengths that claim more than is there are refused before
anything is allocated. Bounded: a few hundred examples each."""

from __future__ import annotations

import contextlib
import tracemalloc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardset_proto import framing, wire

FUZZ = settings(max_examples=300, deadline=None)

keys = st.text(min_size=1, max_size=20)
values = st.binary(max_size=64)
idems = st.none() | st.text(min_size=1, max_size=10)
requests = st.one_of(
    st.builds(wire.put, keys, values, idems),
    st.builds(wire.delete, keys, idems),
    st.builds(wire.cas, keys, st.none() | values, st.none() | values, idems),
    st.builds(
        wire.get,
        keys,
        st.none() | st.sampled_from(["linearizable", "eventual"]),
        st.none() | st.integers(1, 10_000),
        st.integers(0, 2**63),
    ),
)
batches = st.lists(st.tuples(st.integers(0, 2**64 - 1), requests), max_size=10).map(
    lambda items: [[rid, *req] for rid, req in items]
)


def payload_of(batch: list[list[Any]]) -> bytes:
    (payload,) = framing.FrameReader(limit=framing.MAX_CLIENT_FRAME).feed(wire.encode_batch(batch))
    return payload


@FUZZ
@given(batches)
def test_a_batch_of_requests_round_trips(batch: list[list[Any]]) -> None:
    assert wire.decode_batch(payload_of(batch)) == batch


def decode(data: bytes) -> None:
    with contextlib.suppress(wire.BatchError):
        wire.decode_batch(data)


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_batch_error(data: bytes) -> None:
    decode(data)


@FUZZ
@given(batches.filter(bool), st.data())
def test_a_damaged_batch_raises_only_batch_error(
    batch: list[list[Any]], data: st.DataObject
) -> None:
    buf = bytearray(payload_of(batch))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(buf) - 1)) if buf else 0
        how = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if how == "flip" and buf:
            buf[at] = data.draw(st.integers(0, 255))
        elif how == "cut":
            del buf[at:]
        else:
            buf[at:at] = data.draw(st.binary(min_size=1, max_size=6))
    decode(bytes(buf))


@pytest.mark.parametrize(
    "claim",
    [
        b"\xdd\xff\xff\xff\xff",  # array 32
        b"\xdf\xff\xff\xff\xff",  # map 32
        b"\x91\xc6\xff\xff\xff\xff",  # a bin 32 inside the batch
        b"\x91\xdb\xff\xff\xff\xff",  # a str 32 inside the batch
    ],
)
def test_a_claimed_length_is_refused_before_it_is_allocated(claim: bytes) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(wire.BatchError):
            wire.decode_batch(claim + b"\x00" * 64)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"decoding a {len(claim) + 64}-byte claim took {peak} bytes"


@pytest.mark.parametrize(
    "payload",
    [
        b"\x91" * 200_000,  # nesting deeper than the decoder takes
        b"\x81\x91\x01\x01",  # a map keyed by an array
        b"\x81\xc0\x01",  # a map keyed by nil
        b"\xc1",  # the byte msgpack never uses
    ],
)
def test_hostile_documents_are_batch_errors(payload: bytes) -> None:
    with pytest.raises(wire.BatchError):
        wire.decode_batch(payload)


def test_an_oversized_frame_is_refused_before_it_is_buffered() -> None:
    frames = framing.FrameReader(limit=framing.MAX_CLIENT_FRAME)
    with pytest.raises(framing.FrameError, match="exceeds the limit"):
        frames.feed(b"\xff\xff\xff\xff")
    assert frames.buffered == 4  # the header only: nothing was reserved for the claim
