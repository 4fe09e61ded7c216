"""A TCP proxy in front of a Redis whose Pub/Sub connections can be stalled, the others untouched.

The failure Centrifugo's issue #1189 describes: a subscriber connection that
stays open but no longer delivers anything, while every command still works.
A connection becomes a Pub/Sub one when the client sends it a ``SUBSCRIBE``
(``SSUBSCRIBE``); while the proxy is stalled, nothing the server sends on such
a connection is passed on (it waits in the proxy and the kernel buffers, as on
a stuck path), and :meth:`StallProxy.release` lets it through again.
"""

from __future__ import annotations

import asyncio
import contextlib


class StallProxy:
    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.pubsub_connections = 0

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    def stall(self) -> None:
        """Stop passing on what Redis sends to Pub/Sub connections (commands keep flowing)."""
        self._flowing.clear()

    def release(self) -> None:
        self._flowing.set()

    async def close(self) -> None:
        self._flowing.set()
        if self._server is not None:
            self._server.close()
        for writer in tuple(self._writers):
            writer.close()
        for task in tuple(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        except OSError:
            client_writer.close()
            return
        self._writers.update((client_writer, server_writer))
        pubsub = asyncio.Event()  # set once the client subscribed on this connection
        up = asyncio.create_task(self._up(client_reader, server_writer, pubsub))
        down = asyncio.create_task(self._down(server_reader, client_writer, pubsub))
        self._tasks.update((up, down))
        try:
            await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (up, down):
                task.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
            self._tasks.difference_update((up, down))
            for writer in (client_writer, server_writer):
                self._writers.discard(writer)
                writer.close()

    async def _up(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pubsub: asyncio.Event
    ) -> None:
        while chunk := await reader.read(65536):
            if not pubsub.is_set() and b"SUBSCRIBE" in chunk.upper():
                pubsub.set()
                self.pubsub_connections += 1
            writer.write(chunk)
            await writer.drain()

    async def _down(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pubsub: asyncio.Event
    ) -> None:
        while chunk := await reader.read(65536):
            while pubsub.is_set() and not self._flowing.is_set():
                await self._flowing.wait()
            writer.write(chunk)
            await writer.drain()
