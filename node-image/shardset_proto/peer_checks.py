"""Checks of a decoded peer message before it reaches the Raft core.

The peer codec (shardset_proto.peer) only guarantees a message's shape: every integer
is an unsigned 64-bit value. That is not enough to hand it to the core. A HEARTBEAT
with term 2**64 - 1 once moved every replica of a shard to a term whose successor
cannot be encoded, so no election could succeed again, and an APPEND carrying bytes
that are not a command was persisted, committed and then killed the apply loop. These
checks make such a message harmless: the transport drops it, with the reason, before
the core sees it.

They are pure, and all but check_term_jump need no node state: every field must be a
value the node itself could have sent. Numbers are bounded well below the codec's
maximum (MAX_NUMBER, so any increment the core makes stays encodable and fits SQLite's
signed integers), a term may not leap far ahead of the receiving replica's, the
fields must agree with each other the way the core's own messages always do (checked
against the simulator in tests/proto/test_peer_checks.py), and the bytes of every
entry and snapshot must decode as what the group's state machine will apply. A
message that passes can still be a lie (a forged leader, a forged commit index);
authenticating peers is the security issue's job, not the codec's.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from shardset_proto.commands import (
    SYSTEM_PREFIX,
    CommandError,
    decode_check,
    decode_command,
    is_check,
)
from shardset_proto.metadata import decode_change, decode_snapshot
from shardset_proto.slots import SLOTS
from shardset_proto.status import META_GROUP
from shardset_raft.types import ConfState, Entry, EntryType, Message, MessageType, Snapshot

__all__ = [
    "MAX_ENTRIES",
    "MAX_MEMBERS",
    "MAX_NUMBER",
    "MAX_TERM_JUMP",
    "PeerMessageError",
    "check_header",
    "check_message",
    "check_payload",
    "check_term_jump",
]

# Terms, indexes, commit indexes, contexts and ids: at most 2**62. Reaching it takes
# 2**62 elections or entries, and the 2**62 values above it keep every "+1" the core
# makes encodable by the codec (unsigned 64-bit) and by SQLite (signed 64-bit).
MAX_NUMBER = 1 << 62
# How far a message's term may be ahead of the receiving replica's: 2**32 elections never
# happen in a real group (pre-vote keeps a partitioned node's term still), and a forged
# message can then move a group at most this far, so the 2**62 bound takes 2**30 of them.
# Without it, one forged term at the bound leaves the group where its next election's
# term is refused by every peer.
MAX_TERM_JUMP = 1 << 32
MAX_ENTRIES = 1 << 16  # per APPEND; the core sends at most max_entries_per_msg (256)
MAX_MEMBERS = 1 << 10  # voters plus learners of one membership
_SYSTEM_OPS = frozenset({"freeze", "drop", "ingest"})

_REPLIES_THAT_REJECT = frozenset(
    {MessageType.APPEND_RESP, MessageType.VOTE_RESP, MessageType.PRE_VOTE_RESP}
)


class PeerMessageError(ValueError):
    """A peer message the node could never have sent; `field` names what is wrong."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def check_message(group: int, m: Message, *, sender: int, receiver: int) -> None:
    """Raise PeerMessageError unless `m`, for `group`, from the peer that said it is
    node `sender` to this node `receiver`, is one the core may step."""
    check_header(group, m, sender=sender, receiver=receiver)
    check_payload(group, m)


def check_header(group: int, m: Message, *, sender: int, receiver: int) -> None:
    """Every field but the bytes of entries and snapshots (see check_payload)."""
    _number("group", group, low=0)
    _number("to", m.to, low=1)
    _number("frm", m.frm, low=1)
    if m.frm != sender:
        raise PeerMessageError("frm", f"{m.frm} on the connection of node {sender}")
    if m.to != receiver:
        raise PeerMessageError("to", f"{m.to}, but this is node {receiver}")
    for name in ("term", "log_term", "index", "commit", "reject_hint", "context"):
        _number(name, getattr(m, name), low=0)
    if m.log_term > m.term:
        raise PeerMessageError("log_term", f"{m.log_term} is above the term {m.term}")
    if m.reject and m.type not in _REPLIES_THAT_REJECT:
        raise PeerMessageError("reject", f"set on a {m.type.name}")
    if m.entries and m.type != MessageType.APPEND:
        raise PeerMessageError("entries", f"a {m.type.name} carries none")
    if (m.snapshot is not None) != (m.type == MessageType.SNAPSHOT):
        raise PeerMessageError("snapshot", f"a {m.type.name} must carry exactly one if SNAPSHOT")
    if m.entries:
        _check_entries(m)
    if m.snapshot is not None:
        _check_snapshot_meta(m.snapshot, m.term)


def check_term_jump(m: Message, our_term: int) -> None:
    """The one check that needs the receiving replica's state: its current term."""
    if m.term > our_term + MAX_TERM_JUMP:
        raise PeerMessageError("term", f"{m.term} is more than 2**32 ahead of ours ({our_term})")


def _number(name: str, value: int, *, low: int) -> None:
    if not low <= value <= MAX_NUMBER:
        raise PeerMessageError(name, f"{value} is outside [{low}, 2**62]")


def _check_entries(m: Message) -> None:
    entries = m.entries
    if len(entries) > MAX_ENTRIES:
        raise PeerMessageError("entries", f"{len(entries)} entries; the limit is {MAX_ENTRIES}")
    if m.index + len(entries) > MAX_NUMBER:
        raise PeerMessageError("entries", "the last index is above 2**62")
    previous = m.log_term
    for expected, e in enumerate(entries, start=m.index + 1):
        if e.index != expected:
            raise PeerMessageError(
                f"entries[{expected - m.index - 1}].index", f"{e.index}, expected {expected}"
            )
        # A log's terms never decrease, and no entry is newer than its leader's term.
        if not previous <= e.term <= m.term:
            raise PeerMessageError(
                f"entries[{expected - m.index - 1}].term",
                f"{e.term} is outside [{previous}, {m.term}]",
            )
        previous = e.term


def _check_snapshot_meta(snap: Snapshot, term: int) -> None:
    meta = snap.meta
    _number("snapshot.index", meta.index, low=1)
    if not 1 <= meta.term <= term:
        raise PeerMessageError("snapshot.term", f"{meta.term} is outside [1, {term}]")
    _check_conf("snapshot.conf", meta.conf)


def _check_conf(name: str, conf: ConfState) -> None:
    if not conf.voters:
        raise PeerMessageError(f"{name}.voters", "a membership needs a voter")
    if len(conf.voters) + len(conf.learners) > MAX_MEMBERS:
        raise PeerMessageError(name, f"more than {MAX_MEMBERS} members")
    if conf.voters & conf.learners:
        raise PeerMessageError(
            name, f"both voter and learner: {sorted(conf.voters & conf.learners)}"
        )
    for node in conf.voters | conf.learners:
        _number(f"{name} member", node, low=1)


# --- the bytes: what the group's state machine will be handed -------------------
def check_payload(group: int, m: Message) -> None:
    """Every entry decodes as what its group applies, and so does a metadata snapshot.

    Checked on receipt, before anything is persisted: an entry that is stored and then
    cannot be applied stops the group at every restart. A shard snapshot's engine file
    carries its own checksums, verified before it is loaded (storage/snapshot.py).
    """
    for pos, e in enumerate(m.entries):
        try:
            _check_entry(group, e)
        except PeerMessageError as exc:
            raise PeerMessageError(f"entries[{pos}] (index {e.index})", str(exc)) from None
    if m.snapshot is not None and group == META_GROUP and m.snapshot.data:
        try:
            decode_snapshot(m.snapshot.data)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise PeerMessageError(
                "snapshot.data", f"not a metadata snapshot (shard map, users): {exc}"
            ) from None


def _check_entry(group: int, e: Entry) -> None:
    if e.type == EntryType.CONF:
        _check_conf_entry(e.data)
    elif not e.data:
        return  # a new leader's empty entry
    elif group == META_GROUP:
        _check_meta_change(e.data)
    elif e.data[:1] == SYSTEM_PREFIX:
        _check_system_command(e.data[1:])
    elif is_check(e.data):
        try:
            decode_check(e.data)
        except CommandError as exc:
            raise PeerMessageError("data", f"not a consistency check: {exc}") from None
    else:
        try:
            decode_command(e.data)
        except CommandError as exc:
            raise PeerMessageError("data", f"not a command: {exc}") from None


def _check_conf_entry(data: bytes) -> None:
    try:
        conf = ConfState.decode(data)
    except ValueError as exc:
        raise PeerMessageError("data", f"not a membership: {exc}") from None
    if conf.encode() != data:
        raise PeerMessageError("data", "a membership the node would not have encoded")
    _check_conf("membership", conf)


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise PeerMessageError("data", f"{what} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PeerMessageError("data", f"{what} is not a JSON object")
    return doc


def _check_meta_change(data: bytes) -> None:
    """What MetaMachine makes: a map change (the epoch expected, the whole new map) or a
    user change (shardset_proto.metadata)."""
    doc = _json_object(data, "a metadata entry")
    if "op" not in doc and type(doc.get("expect_epoch")) is not int:
        raise PeerMessageError("data", "a map change needs an integer expect_epoch")
    try:
        decode_change(data)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise PeerMessageError(
            "data", f"not a metadata entry (map or user change): {exc}"
        ) from None


def _check_system_command(body: bytes) -> None:
    """What machines.system_command makes: an op on the slots [start, end)."""
    doc = _json_object(body, "a slot-move command")
    op, start, end = doc.get("op"), doc.get("start"), doc.get("end")
    if op not in _SYSTEM_OPS:
        raise PeerMessageError("data", f"unknown slot-move op {op!r:.40}")
    if type(start) is not int or type(end) is not int or not 0 <= start < end <= SLOTS:
        raise PeerMessageError(
            "data", f"slot range [{start!r:.20}, {end!r:.20}) is not in [0, {SLOTS})"
        )
    if op == "ingest":
        raw = doc.get("data")
        if not isinstance(raw, str):
            raise PeerMessageError("data", "an ingest carries its keys as base64 text")
        try:
            base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise PeerMessageError("data", f"an ingest's keys are not base64: {exc}") from None
