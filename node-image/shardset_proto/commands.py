"""Replicated write commands: their wire format and their deterministic effect on one key.

A command travels through a shard's Raft log as one msgpack array (positional fields, so
it stays small)::

    [1, key, value, idem]              Put
    [2, key, idem]                     Delete
    [3, key, expected, new, idem]      Cas   (expected/new may be nil = "absent")

A consistency check (:class:`ComputeChecksum`) is not a key-value command: its entry is
the byte ``0xc2`` (never the first byte of a msgpack array) then a msgpack array ``[id]``;
every replica that applies it computes a digest of the shard's state at that index.

``key``/``value``/``expected``/``new``/``idem`` are msgpack bin; ``idem`` is nil when the
client did not ask for exactly-once. :func:`decode_command` treats its input as untrusted
and raises :class:`CommandError` for anything that is not exactly this shape.

:func:`execute` is the state machine's transition for one command: a pure function of the
key's current value, so every replica computes the same result and the same write. The
idempotency table (which remembers results per ``idem``) lives in the engine, because it
is state, but it too only depends on the sequence of applied commands.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack  # type: ignore[import-untyped]  # ships no type information

__all__ = [
    "MAX_IDEM_BYTES",
    "MAX_KEY_BYTES",
    "MAX_VALUE_BYTES",
    "Cas",
    "Command",
    "CommandError",
    "ComputeChecksum",
    "Delete",
    "Outcome",
    "Put",
    "Result",
    "SizeLimitError",
    "decode_check",
    "decode_command",
    "decode_result",
    "encode_check",
    "encode_command",
    "encode_result",
    "execute",
    "is_check",
    "make_idem",
]

MAX_KEY_BYTES = 1024
MAX_VALUE_BYTES = 1 << 20
# Room for a client id (a UUID, a pod name) plus an 8-byte sequence number.
MAX_IDEM_BYTES = 256

_PUT, _DELETE, _CAS = 1, 2, 3

Result = dict[str, bool | bytes | None]


class CommandError(ValueError):
    """A command is malformed: bad wire bytes, wrong field types, or a size limit exceeded."""


class SizeLimitError(CommandError):
    """A key, value or idempotency key is larger than its limit."""


def check_key(key: object) -> bytes:
    """Return ``key`` if it is a bytes key within :data:`MAX_KEY_BYTES`, else raise."""
    if not isinstance(key, bytes):
        raise CommandError(f"key must be bytes, not {type(key).__name__}")
    if len(key) > MAX_KEY_BYTES:
        raise SizeLimitError(f"key is {len(key)} bytes; the limit is {MAX_KEY_BYTES}")
    return key


def _check_value(value: object, what: str, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, bytes):
        raise CommandError(f"{what} must be bytes, not {type(value).__name__}")
    if len(value) > MAX_VALUE_BYTES:
        raise SizeLimitError(f"{what} is {len(value)} bytes; the limit is {MAX_VALUE_BYTES}")


def _check_idem(idem: object) -> None:
    if idem is None:
        return
    if not isinstance(idem, bytes) or not idem:
        raise CommandError("idem must be non-empty bytes or None")
    if len(idem) > MAX_IDEM_BYTES:
        raise SizeLimitError(f"idem is {len(idem)} bytes; the limit is {MAX_IDEM_BYTES}")


def make_idem(client: bytes, seq: int) -> bytes:
    """An idempotency key from a client id and that client's request sequence number."""
    return client + seq.to_bytes(8, "big")


@dataclass(frozen=True, slots=True)
class Put:
    """Set ``key`` to ``value``."""

    key: bytes
    value: bytes
    idem: bytes | None = None

    def __post_init__(self) -> None:
        check_key(self.key)
        _check_value(self.value, "value", optional=False)
        _check_idem(self.idem)


@dataclass(frozen=True, slots=True)
class Delete:
    """Remove ``key`` (a no-op if it is absent)."""

    key: bytes
    idem: bytes | None = None

    def __post_init__(self) -> None:
        check_key(self.key)
        _check_idem(self.idem)


@dataclass(frozen=True, slots=True)
class Cas:
    """If ``key``'s value equals ``expected`` (None = absent), set it to ``new`` (None = delete)."""

    key: bytes
    expected: bytes | None
    new: bytes | None
    idem: bytes | None = None

    def __post_init__(self) -> None:
        check_key(self.key)
        _check_value(self.expected, "expected", optional=True)
        _check_value(self.new, "new", optional=True)
        _check_idem(self.idem)


Command = Put | Delete | Cas


def encode_command(cmd: Command) -> bytes:
    """The log-entry bytes of ``cmd``."""
    fields: list[object]
    if isinstance(cmd, Put):
        fields = [_PUT, cmd.key, cmd.value, cmd.idem]
    elif isinstance(cmd, Delete):
        fields = [_DELETE, cmd.key, cmd.idem]
    elif isinstance(cmd, Cas):
        fields = [_CAS, cmd.key, cmd.expected, cmd.new, cmd.idem]
    else:
        raise CommandError(f"not a command: {type(cmd).__name__}")
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return packed


def decode_command(data: bytes) -> Command:
    """Parse log-entry bytes; anything but a well-formed command raises :class:`CommandError`."""
    try:
        fields = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise CommandError(f"not a msgpack command: {exc}") from exc
    if not isinstance(fields, list) or not fields or type(fields[0]) is not int:
        raise CommandError("a command is a msgpack array starting with an integer op code")
    op, args = fields[0], fields[1:]
    # The dataclass constructors check field types and sizes; only the arity is checked here.
    arity = {_PUT: 3, _DELETE: 2, _CAS: 4}.get(op)
    if arity is None:
        raise CommandError(f"unknown op code {op}")
    if len(args) != arity:
        raise CommandError(f"op {op} takes {arity} fields, got {len(args)}")
    if op == _PUT:
        return Put(*args)
    if op == _DELETE:
        return Delete(*args)
    return Cas(*args)


# The first byte of a slot-move command (JSON) in a shard's log: msgpack never uses it.
SYSTEM_PREFIX = b"\xc1"
CHECK_MARKER = b"\xc2"  # msgpack's `false`: never the first byte of a command array


@dataclass(frozen=True, slots=True)
class ComputeChecksum:
    """Replicated through a shard's log by its leader: every replica digests the shard's
    state when it applies this entry, so all digests are of the same applied index."""

    check_id: int

    def __post_init__(self) -> None:
        if type(self.check_id) is not int or not 0 <= self.check_id < 1 << 63:
            raise CommandError("a check id is an integer in [0, 2**63)")


def is_check(data: bytes) -> bool:
    """Whether a log entry's bytes are a :class:`ComputeChecksum` (not a command)."""
    return data[:1] == CHECK_MARKER


def encode_check(check: ComputeChecksum) -> bytes:
    packed: bytes = msgpack.packb([check.check_id])
    return CHECK_MARKER + packed


def decode_check(data: bytes) -> ComputeChecksum:
    """Parse a check entry; anything malformed raises :class:`CommandError`."""
    if not is_check(data):
        raise CommandError("not a consistency check entry")
    try:
        fields = msgpack.unpackb(data[1:], raw=False, use_list=True, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise CommandError(f"not a msgpack check: {exc}") from exc
    if not isinstance(fields, list) or len(fields) != 1:
        raise CommandError("a check is a msgpack array [id]")
    return ComputeChecksum(fields[0])


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one command does: the result for the client and the write to make, if any."""

    result: Result
    write: bool
    value: bytes | None  # the key's new value when ``write``; None means delete it


def execute(cmd: Command, current: bytes | None) -> Outcome:
    """Apply ``cmd`` to a key whose value is ``current`` (None = absent). Pure."""
    exists = current is not None
    if isinstance(cmd, Put):
        return Outcome({"prev_exists": exists}, True, cmd.value)
    if isinstance(cmd, Delete):
        return Outcome({"existed": exists}, exists, None)
    if current != cmd.expected:
        return Outcome({"ok": False, "current": current}, False, current)
    # "current" is always the key's value after the command, so a client sees the same
    # shape whether its compare succeeded or not.
    return Outcome({"ok": True, "current": cmd.new}, current != cmd.new, cmd.new)


def encode_result(result: Result) -> bytes:
    """Bytes for storing a result in the idempotency table and in snapshots."""
    packed: bytes = msgpack.packb(result, use_bin_type=True)
    return packed


def decode_result(data: bytes) -> Result:
    """Inverse of :func:`encode_result`; raises :class:`CommandError` on malformed bytes."""
    try:
        result = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise CommandError(f"not a msgpack result: {exc}") from exc
    if not isinstance(result, dict) or not all(
        isinstance(k, str) and (v is None or isinstance(v, bool | bytes)) for k, v in result.items()
    ):
        raise CommandError("a result is a map of str to bool, bytes or nil")
    return result
