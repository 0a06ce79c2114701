"""The wire codec: arbitrary batches round-trip exactly; malformed input raises CodecError only."""

from __future__ import annotations

import contextlib

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardset_proto.peer import (
    ARRAY_HEADER,
    CodecError,
    decode_batch,
    encode_batch,
    max_encoded_size,
)
from shardset_raft.types import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)

u64 = st.integers(min_value=0, max_value=2**64 - 1)
small = st.integers(min_value=0, max_value=1000)
ids = st.one_of(small, u64)
node_sets = st.frozensets(ids, max_size=5)

entries = st.builds(
    Entry, term=ids, index=ids, type=st.sampled_from(EntryType), data=st.binary(max_size=64)
)
conf_states = st.builds(ConfState, voters=node_sets, learners=node_sets)
snapshots = st.builds(
    Snapshot,
    meta=st.builds(SnapshotMeta, index=ids, term=ids, conf=conf_states),
    data=st.binary(max_size=256),
)
messages = st.builds(
    Message,
    type=st.sampled_from(MessageType),
    to=ids,
    frm=ids,
    term=ids,
    log_term=ids,
    index=ids,
    entries=st.lists(entries, max_size=4).map(tuple),
    commit=ids,
    reject=st.booleans(),
    reject_hint=ids,
    context=ids,
    snapshot=st.none() | snapshots,
)
batches = st.lists(st.tuples(ids, messages), max_size=8)


def _valid_item() -> list[object]:
    entry = [3, 7, 0, b"x"]
    snap = [5, 2, [1, 2], [3], b"state"]
    return [9, 1, 2, 1, 3, 2, 6, [entry], 5, False, 0, 0, snap]


def _pack(doc: object) -> bytes:
    packed: bytes = msgpack.packb(doc, use_bin_type=True)
    return packed


@given(batches)
def test_round_trip(batch: list[tuple[int, Message]]) -> None:
    decoded = decode_batch(encode_batch(batch))
    assert decoded == batch
    for _, copy in decoded:
        # Equality of IntEnum and int would hide a lost enum type.
        assert type(copy.type) is MessageType
        assert all(type(e.type) is EntryType for e in copy.entries)


@given(st.lists(st.tuples(ids, messages), min_size=1, max_size=8))
def test_transport_size_bound_holds(batch: list[tuple[int, Message]]) -> None:
    # The transport cuts frames by this bound before encoding; it must never underestimate.
    bound = ARRAY_HEADER + sum(max_encoded_size(m) for _, m in batch)
    assert len(encode_batch(batch)) <= bound


def test_known_item_decodes() -> None:
    [(group, m)] = decode_batch(_pack([_valid_item()]))
    assert group == 9
    assert m.type is MessageType.APPEND
    assert m.entries == (Entry(3, 7, EntryType.NORMAL, b"x"),)
    conf = ConfState(frozenset({1, 2}), frozenset({3}))
    assert m.snapshot == Snapshot(SnapshotMeta(5, 2, conf), b"state")


def test_empty_batch() -> None:
    assert decode_batch(encode_batch([])) == []


def test_encode_rejects_out_of_range_ids() -> None:
    with pytest.raises(CodecError, match="cannot encode"):
        encode_batch([(2**64, Message(MessageType.APPEND, 1, 2, 3))])


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "not a msgpack document"),
        (b"\xc1", "not a msgpack document"),  # reserved byte
        (b"\x91", "not a msgpack document"),  # array of one, truncated
        (b"\x90\x90", "not a msgpack document"),  # trailing data
        (b"\xdd\xff\xff\xff\xff", "not a msgpack document"),  # claims 4G elements
        (b"\x80", "batch must be an array"),  # a map
        (b"\xa3abc", "batch must be an array"),  # a str
    ],
)
def test_garbage_raises_codec_error(data: bytes, reason: str) -> None:
    with pytest.raises(CodecError, match=reason):
        decode_batch(data)


def _mutated(position: int, value: object) -> list[object]:
    item = _valid_item()
    item[position] = value
    return item


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ([1, 2, 3], "array of 13 fields"),
        ({"group": 1}, "array of 13 fields"),
        (_mutated(0, -1), "unsigned 64-bit"),
        (_mutated(2, "2"), "unsigned 64-bit"),
        (_mutated(4, True), "unsigned 64-bit"),
        (_mutated(4, 1.5), "unsigned 64-bit"),
        (_mutated(1, 99), "unknown message type"),
        (_mutated(9, 0), "reject must be a bool"),
        (_mutated(7, b"entries"), "entries must be an array"),
        (_mutated(7, [[1, 2, 0]]), "entry must be an array of 4"),
        (_mutated(7, [[1, 2, 7, b""]]), "unknown entry type"),
        (_mutated(7, [[1, 2, 0, "text"]]), "entry data must be bin"),
        (_mutated(12, [1, 2, [], []]), "snapshot must be nil or an array of 5"),
        (_mutated(12, [1, 2, [1, -3], [], b""]), "unsigned 64-bit"),
        (_mutated(12, [1, 2, 7, [], b""]), "membership must be an array"),
        (_mutated(12, [1, 2, [], [], None]), "snapshot data must be bin"),
    ],
)
def test_malformed_item_raises_codec_error(item: object, reason: str) -> None:
    with pytest.raises(CodecError, match=reason):
        decode_batch(_pack([_valid_item(), item]))


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_else(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        decode_batch(data)


@given(batches.filter(bool), st.data())
def test_corrupted_encodings_never_raise_anything_else(
    batch: list[tuple[int, Message]], data: st.DataObject
) -> None:
    encoded = bytearray(encode_batch(batch))
    flips = data.draw(st.lists(st.integers(0, len(encoded) - 1), min_size=1, max_size=4))
    for pos in flips:
        encoded[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(encoded)))
    with contextlib.suppress(CodecError):
        decode_batch(bytes(encoded[:cut]))
