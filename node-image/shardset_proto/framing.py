"""The one frame layout of a node's peer port, shared by the peer transport and the
client wire protocol (both are served on that port).

Every frame, both directions::

    uint32 big-endian payload length | payload

The first frame on a connection is a hello::

    magic (4 bytes) | uint16 protocol version | uint64 node id  [| later fields, ignored]

The magic says who is speaking: PEER_MAGIC a node's peer transport, CLIENT_MAGIC a
client of the binary key-value protocol (shardset_proto.wire). A client says 0 as its
node id. The acceptor reads the hello exactly (read_hello), so the bytes after it are
still in the stream for whoever serves the connection.
"""

from __future__ import annotations

import asyncio
import struct

__all__ = [
    "CLIENT_MAGIC",
    "HEADER_SIZE",
    "MAX_CLIENT_FRAME",
    "MAX_HELLO",
    "MAX_PEER_FRAME",
    "PEER_MAGIC",
    "FrameError",
    "FrameReader",
    "frame",
    "hello",
    "parse_hello",
    "read_hello",
]

PEER_MAGIC = b"SHRD"
CLIENT_MAGIC = b"SHKV"
# The largest payload each side accepts: a client's batch of requests or answers, and
# a peer's batch of Raft messages (appends and snapshots are larger).
MAX_CLIENT_FRAME = 16 * 1024 * 1024
MAX_PEER_FRAME = 64 * 1024 * 1024
MAX_HELLO = 1024  # room for fields a later version may append
READ_CHUNK = 256 * 1024  # bytes asked of the socket per read

_LENGTH = struct.Struct(">I")
_HELLO = struct.Struct(">4sHQ")
HEADER_SIZE = _LENGTH.size


class FrameError(Exception):
    """The byte stream cannot be framed (an oversized frame, a bad hello): close it."""


def frame(payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload)) + payload


def hello(magic: bytes, version: int, node_id: int) -> bytes:
    return frame(_HELLO.pack(magic, version, node_id))


def parse_hello(payload: bytes, magics: tuple[bytes, ...]) -> tuple[bytes, int, int]:
    """(magic, version, node id) from a hello frame's payload."""
    if len(payload) < _HELLO.size:
        raise FrameError(f"hello of {len(payload)} bytes")
    magic, version, node_id = _HELLO.unpack_from(payload)
    if magic not in magics:
        raise FrameError(f"not a Shardset hello (magic {magic!r})")
    return magic, version, node_id


async def read_hello(
    reader: asyncio.StreamReader, magics: tuple[bytes, ...]
) -> tuple[bytes, int, int]:
    """The other side's hello, read exactly (nothing after it is consumed)."""
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if not _HELLO.size <= length <= MAX_HELLO:
        raise FrameError(f"hello frame of {length} bytes")
    return parse_hello(await reader.readexactly(length), magics)


class FrameReader:
    """Cuts a byte stream into frame payloads. `feed` takes bytes already read and
    returns every frame they complete; `read` reads the next chunk from `reader`."""

    def __init__(self, reader: asyncio.StreamReader | None = None, *, limit: int) -> None:
        self._reader = reader
        self._buf = bytearray()
        self._limit = limit

    @property
    def buffered(self) -> int:
        """Bytes of a frame not yet complete."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        while len(buf) - pos >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buf, pos)
            if length > self._limit:
                # Refused before it is buffered: a bad length must not cost the memory.
                raise FrameError(f"frame of {length} bytes exceeds the limit of {self._limit}")
            end = pos + _LENGTH.size + length
            if end > len(buf):
                break
            out.append(bytes(buf[pos + _LENGTH.size : end]))
            pos = end
        del buf[:pos]
        return out

    async def read(self) -> list[bytes] | None:
        """The frames the next chunk completes (maybe none); None at the end of the
        stream (`buffered` then says whether it ended inside a frame)."""
        assert self._reader is not None, "a FrameReader made without a stream only feeds"
        data = await self._reader.read(READ_CHUNK)
        if not data:
            return None
        return self.feed(data)
