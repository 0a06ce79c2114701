"""A fault-injecting TCP proxy, for partitioning real node processes on loopback in tests.

Point a node's peer address at the proxy and the proxy at the real peer. Then:

* ``block("drop")`` models a partition long enough for TCP to give up: open connections
  are closed and new ones are closed as soon as they are accepted, until ``unblock()``.
* ``block("hold")`` models a short partition: bytes stop flowing both ways and new
  connections wait; on ``unblock()`` everything held is delivered in order, as TCP
  retransmission would.

Each direction of a connection goes through its own proxy, so a one-way partition is
blocking only the proxy in front of one node.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

__all__ = ["BlockMode", "FaultProxy"]

BlockMode = Literal["drop", "hold"]
_CHUNK = 64 * 1024


class FaultProxy:
    def __init__(self, listen_port: int, target: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.target = target
        self.host = host
        self.connections = 0  # accepted, for tests to check that a dial went through the proxy
        self._port = listen_port
        self._mode: BlockMode | None = None
        self._open = asyncio.Event()  # set while traffic may flow
        self._open.set()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        return self._port

    @property
    def blocked(self) -> BlockMode | None:
        return self._mode

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self._port)
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cancel_handlers()
        if self._server is not None:
            await self._server.wait_closed()

    def block(self, mode: BlockMode = "drop") -> None:
        self._mode = mode
        self._open.clear()
        if mode == "drop":
            for task in self._handlers:
                task.cancel()  # their finally blocks close both sides

    def unblock(self) -> None:
        self._mode = None
        self._open.set()

    def _dropping(self) -> bool:
        return self._mode == "drop"

    async def _cancel_handlers(self) -> None:
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        self.connections += 1
        # The top of the task: ending cancelled makes 3.11's asyncio.streams log an error.
        with contextlib.suppress(asyncio.CancelledError):
            await self._serve(reader, writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self._dropping():
                return
            await self._open.wait()  # "hold" parks new connections here
            if not self._dropping():  # it may have turned into "drop" meanwhile
                await self._forward(reader, writer)
        finally:
            await _close(writer)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            return  # target down: closing the client side is what it would see anyway
        pipes = [
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ]
        try:
            # Either side closing ends the whole connection; half-close isn't needed here.
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
            await asyncio.wait(pipes)
            await _close(up_writer)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(_CHUNK):
                await self._open.wait()  # "hold": keep the chunk until unblocked
                writer.write(data)
                await writer.drain()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
