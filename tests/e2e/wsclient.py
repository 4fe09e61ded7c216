"""A test client of the gateway: one real WebSocket connection, frames collected."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

Frame = dict[str, Any]
TERMINAL = frozenset({"agent_completed", "agent_error", "agent_cancelled", "agent_death"})


class WsClient:
    """Reads every frame in the background; tests wait on predicates over them."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.frames: list[Frame] = []
        self.hello: Frame = {}
        self._changed = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None
        self._next_id = 0
        self.closed = asyncio.Event()

    @classmethod
    async def open(cls, url: str, token: str, *, after: str | None = None) -> WsClient:
        target = f"{url}?after={after}" if after else url
        return await cls.connect(target, headers={"Authorization": f"Bearer {token}"})

    @classmethod
    async def connect(
        cls, url: str, *, headers: dict[str, str] | None = None, subprotocols: Sequence[str] = ()
    ) -> WsClient:
        """Connect with any handshake (headers, subprotocols); the first frame must be ``connected``."""
        connection = await connect(
            url,
            additional_headers=headers,
            subprotocols=[Subprotocol(entry) for entry in subprotocols] or None,
            compression=None,
            open_timeout=10,
        )
        client = cls(connection)
        client.hello = json.loads(await asyncio.wait_for(connection.recv(), 10))
        assert client.hello["type"] == "connected", client.hello
        client._reader = asyncio.create_task(client._read())
        return client

    async def _read(self) -> None:
        try:
            async for message in self.connection:
                frame = json.loads(message)
                async with self._changed:
                    self.frames.append(frame)
                    self._changed.notify_all()
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()
            async with self._changed:
                self._changed.notify_all()

    def new_id(self) -> str:
        self._next_id += 1
        return f"c{self._next_id}"

    async def send(self, frame: Frame | str | bytes) -> None:
        await self.connection.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))

    async def wait_for(self, predicate: Callable[[Frame], bool], *, timeout: float = 15.0) -> Frame:
        """The first frame (already received or arriving) that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        async with self._changed:
            while True:
                for frame in self.frames:
                    if predicate(frame):
                        return frame
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.closed.is_set():
                    raise AssertionError(
                        f"no matching frame within {timeout}s; last frames: {self.frames[-5:]}"
                    )
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    continue

    async def call(self, frame: Frame, *, timeout: float = 15.0) -> Frame:
        """Send a request and return its reply (or error frame) by correlation id."""
        frame = {**frame, "id": frame.get("id", self.new_id())}
        await self.send(frame)
        return await self.wait_for(lambda f: f.get("id") == frame["id"] and "type" in f, timeout=timeout)

    async def start_run(self, agent: str, input_: Frame, **extra: Any) -> Frame:
        return await self.call({"type": "run.start", "agent": agent, "input": input_, **extra})

    def events(self, run_id: str | None = None) -> list[Frame]:
        return [
            f
            for f in self.frames
            if "seq" in f and "event_id" in f and (run_id is None or f.get("run_id") == run_id)
        ]

    async def wait_terminal(self, run_id: str, *, timeout: float = 30.0) -> Frame:
        return await self.wait_for(
            lambda f: f.get("run_id") == run_id and f.get("type") in TERMINAL, timeout=timeout
        )

    async def close(self) -> None:
        await self.connection.close()
        if self._reader is not None:
            await self._reader
