"""Wire encoding of Raft messages: one msgpack array per batch, positional fields only.

A batch is a msgpack array of items; each item is a flat array (no field names, so
it stays small and fast to pack)::

    [group, type, to, frm, term, log_term, index, entries, commit, reject,
     reject_hint, context, snapshot]

``entries`` is an array of ``[term, index, type, data]``; ``snapshot`` is nil or
``[index, term, voters, learners, data]`` with ``voters``/``learners`` arrays of node ids.
All integers are unsigned 64-bit, ``reject`` is a msgpack bool, ``data`` is msgpack bin.

Decoding is for untrusted input: anything that is not exactly this shape raises
:class:`CodecError` and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgpack  # type: ignore[import-untyped]  # ships no type information

from shardset_raft.types import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)

__all__ = ["ARRAY_HEADER", "CodecError", "decode_batch", "encode_batch", "max_encoded_size"]

_U64_MAX = (1 << 64) - 1
_ITEM_ARITY = 13
_ENTRY_ARITY = 4
_SNAPSHOT_ARITY = 5
# Lookup tables instead of calling the enum: a dict miss is cheaper than catching ValueError.
_MESSAGE_TYPES: dict[int, MessageType] = {int(t): t for t in MessageType}
_ENTRY_TYPES: dict[int, EntryType] = {int(t): t for t in EntryType}

_Item = tuple[int, Message]


class CodecError(ValueError):
    """The bytes are not a well-formed batch (or a value cannot be encoded)."""


def encode_batch(items: Sequence[_Item]) -> bytes:
    """Encode ``(group, message)`` pairs, in order, as one msgpack document."""
    try:
        packed: bytes = msgpack.packb([_encode_item(g, m) for g, m in items], use_bin_type=True)
    except (OverflowError, TypeError, ValueError) as exc:
        # Only a caller bug gets here (an id beyond 64 bits, data that is not bytes).
        raise CodecError(f"cannot encode batch: {exc}") from exc
    return packed


def _encode_item(group: int, m: Message) -> tuple[object, ...]:
    snap = m.snapshot
    return (
        group,
        int(m.type),
        m.to,
        m.frm,
        m.term,
        m.log_term,
        m.index,
        [(e.term, e.index, int(e.type), e.data) for e in m.entries],
        m.commit,
        m.reject,
        m.reject_hint,
        m.context,
        None if snap is None else _encode_snapshot(snap),
    )


def _encode_snapshot(snap: Snapshot) -> tuple[object, ...]:
    meta = snap.meta
    conf = meta.conf
    return (meta.index, meta.term, sorted(conf.voters), sorted(conf.learners), snap.data)


# Upper bounds of the codec's msgpack output: an int takes at most 9 bytes, a bin or
# array header at most 5. An item is 12 scalars and 2 headers; an entry 3 ints and 2 headers.
ARRAY_HEADER = 5
_ITEM_BOUND = 12 * 9 + 2 * ARRAY_HEADER
_ENTRY_BOUND = 3 * 9 + 2 * ARRAY_HEADER


def max_encoded_size(m: Message) -> int:
    """An upper bound of the bytes `m` takes in a batch (without the batch's header)."""
    size = _ITEM_BOUND
    for e in m.entries:
        size += _ENTRY_BOUND + len(e.data)
    snap = m.snapshot
    if snap is not None:
        members = len(snap.meta.conf.voters) + len(snap.meta.conf.learners)
        size += 2 * 9 + 4 * ARRAY_HEADER + 9 * members + len(snap.data)
    return size


def decode_batch(data: bytes) -> list[_Item]:
    """Decode a batch made by :func:`encode_batch`; raise :class:`CodecError` if malformed."""
    doc = _unpack(data)
    if type(doc) is not tuple:
        raise CodecError(f"batch must be an array, got {type(doc).__name__}")
    return [_decode_item(pos, item) for pos, item in enumerate(doc)]


def _unpack(data: bytes) -> object:
    try:
        # use_list=False: arrays come back as tuples, which are cheaper and hashable.
        # raw=False: a msgpack str becomes a Python str, so it cannot pass for bin data.
        # Size limits default to len(data), so a tiny input cannot claim a huge array.
        return msgpack.unpackb(data, use_list=False, raw=False)
    except Exception as exc:  # msgpack raises many unrelated types on garbage
        raise CodecError(f"not a msgpack document: {type(exc).__name__}: {exc}") from exc


def _decode_item(pos: int, item: object) -> _Item:
    if type(item) is not tuple or len(item) != _ITEM_ARITY:
        raise CodecError(f"item {pos}: expected an array of {_ITEM_ARITY} fields")
    group, mtype, to, frm, term, log_term, index, entries, commit, reject, hint, ctx, snap = item
    _require_u64s(pos, (group, mtype, to, frm, term, log_term, index, commit, hint, ctx))
    msg_type = _MESSAGE_TYPES.get(mtype)
    if msg_type is None:
        raise CodecError(f"item {pos}: unknown message type {mtype}")
    if type(reject) is not bool:
        raise CodecError(f"item {pos}: reject must be a bool")
    # Positional arguments: a frozen dataclass __init__ is the hot spot of decoding, and
    # keywords cost about 20% more. The hypothesis round trip test pins the field order.
    message = Message(
        msg_type,
        to,
        frm,
        term,
        log_term,
        index,
        _decode_entries(pos, entries),
        commit,
        reject,
        hint,
        ctx,
        None if snap is None else _decode_snapshot(pos, snap),
    )
    return group, message


def _decode_entries(pos: int, raw: object) -> tuple[Entry, ...]:
    if type(raw) is not tuple:
        raise CodecError(f"item {pos}: entries must be an array")
    return tuple([_decode_entry(pos, e) for e in raw])  # a list builds faster than a genexpr


def _decode_entry(pos: int, raw: object) -> Entry:
    if type(raw) is not tuple or len(raw) != _ENTRY_ARITY:
        raise CodecError(f"item {pos}: an entry must be an array of {_ENTRY_ARITY} fields")
    term, index, etype, data = raw
    _require_u64s(pos, (term, index, etype))
    entry_type = _ENTRY_TYPES.get(etype)
    if entry_type is None:
        raise CodecError(f"item {pos}: unknown entry type {etype}")
    if type(data) is not bytes:
        raise CodecError(f"item {pos}: entry data must be bin")
    return Entry(term, index, entry_type, data)


def _decode_snapshot(pos: int, raw: object) -> Snapshot:
    if type(raw) is not tuple or len(raw) != _SNAPSHOT_ARITY:
        raise CodecError(f"item {pos}: snapshot must be nil or an array of {_SNAPSHOT_ARITY}")
    index, term, voters, learners, data = raw
    _require_u64s(pos, (index, term))
    if type(data) is not bytes:
        raise CodecError(f"item {pos}: snapshot data must be bin")
    conf = ConfState(_decode_ids(pos, voters), _decode_ids(pos, learners))
    return Snapshot(SnapshotMeta(index=index, term=term, conf=conf), data)


def _decode_ids(pos: int, raw: object) -> frozenset[int]:
    if type(raw) is not tuple:
        raise CodecError(f"item {pos}: snapshot membership must be an array of node ids")
    _require_u64s(pos, raw)
    return frozenset(raw)


def _require_u64s(pos: int, values: tuple[object, ...]) -> None:
    # `type(v) is int` also rejects bools, which msgpack decodes as a distinct type.
    for v in values:
        if type(v) is not int or not 0 <= v <= _U64_MAX:
            raise CodecError(f"item {pos}: expected an unsigned 64-bit integer, got {v!r:.40}")
