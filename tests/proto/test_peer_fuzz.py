"""Fuzzing the peer codec and the checks behind it, as the transport uses them.

test_peer.py holds the codec's round trip and its named malformed cases; these are the
hypothesis fuzzers that stay in CI: valid batches damaged in every way a byte stream
can be (flips, cuts, insertions, splices), lengths that claim more than is there, and
nesting deep enough to blow a recursive decoder. Decoding raises CodecError and nothing
else, and whatever decodes is then checked raising PeerMessageError and nothing else,
exactly as Transport._read_frames does. Bounded: a few hundred examples each.
"""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardset_proto.peer import CodecError, decode_batch, encode_batch
from shardset_proto.peer_checks import PeerMessageError, check_message
from shardset_raft.types import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)

FUZZ = settings(max_examples=300, deadline=None)
U64_MAX = (1 << 64) - 1

number = st.one_of(st.integers(0, 30), st.sampled_from([1 << 62, U64_MAX]))
messages = st.builds(
    Message,
    type=st.sampled_from(MessageType),
    to=number,
    frm=number,
    term=number,
    log_term=number,
    index=number,
    entries=st.lists(
        st.builds(Entry, number, number, st.sampled_from(EntryType), st.binary(max_size=24)),
        max_size=3,
    ).map(tuple),
    commit=number,
    reject=st.booleans(),
    reject_hint=number,
    context=number,
    snapshot=st.none()
    | st.builds(
        Snapshot,
        st.builds(
            SnapshotMeta,
            number,
            number,
            st.builds(
                ConfState, st.frozensets(number, max_size=3), st.frozensets(number, max_size=2)
            ),
        ),
        st.binary(max_size=24),
    ),
)
batches = st.lists(st.tuples(number, messages), min_size=1, max_size=5)


def receive(data: bytes) -> int:
    """What the transport does with one frame's payload: the messages delivered."""
    try:
        items = decode_batch(data)
    except CodecError:
        return -1
    delivered = 0
    for group, m in items:
        try:
            check_message(group, m, sender=1, receiver=2)
        except PeerMessageError:
            continue
        delivered += 1
    return delivered


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    data = bytearray(encode_batch(draw(batches)))
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(["flip", "cut", "insert", "splice"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if how == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif how == "cut":
            del data[at:]
        elif how == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=9))
        else:  # a length or type byte of msgpack's own vocabulary
            data[at:at] = bytes([draw(st.sampled_from([0xC4, 0xC6, 0xDC, 0xDD, 0xCF, 0x9D]))])
    return bytes(data)


@FUZZ
@given(damaged())
def test_a_damaged_batch_raises_only_the_named_errors(data: bytes) -> None:
    receive(data)


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_the_named_errors(data: bytes) -> None:
    receive(data)


@FUZZ
@given(batches)
def test_every_valid_batch_round_trips_and_is_checked_item_by_item(
    batch: list[tuple[int, Message]],
) -> None:
    assert decode_batch(encode_batch(batch)) == batch
    assert 0 <= receive(encode_batch(batch)) <= len(batch)


# msgpack headers that claim 2**32 - 1 elements or bytes, with nothing behind them.
CLAIMS = [
    b"\xdd\xff\xff\xff\xff",  # array 32
    b"\xdf\xff\xff\xff\xff",  # map 32
    b"\xc6\xff\xff\xff\xff",  # bin 32
    b"\xdb\xff\xff\xff\xff",  # str 32
    b"\x91\xdd\xff\xff\xff\xff",  # inside a batch
    b"\x91\x9d\x00\x01\x02\x01\x00\x00\x00\x00\xdd\xff\xff\xff\xff",  # as an item's entries
]


@pytest.mark.parametrize("claim", CLAIMS)
def test_a_claimed_length_is_refused_before_it_is_allocated(claim: bytes) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(CodecError):
            decode_batch(claim + b"\x00" * 64)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"decoding a {len(claim) + 64}-byte claim took {peak} bytes"


def test_nesting_deeper_than_the_decoder_takes_is_a_codec_error() -> None:
    with pytest.raises(CodecError):
        decode_batch(b"\x91" * 200_000)


def test_a_forged_heartbeat_decodes_but_is_refused() -> None:
    """The reproduction of issue 15 at this layer: the codec takes term 2**64 - 1 (it is
    a u64), the checks do not."""
    m = Message(MessageType.HEARTBEAT, 2, 1, U64_MAX)
    assert receive(encode_batch([(0, m)])) == 0
    bad = Entry(5, 1, EntryType.NORMAL, b"\x93garbage")
    assert receive(encode_batch([(1, Message(MessageType.APPEND, 2, 1, 5, entries=(bad,)))])) == 0
