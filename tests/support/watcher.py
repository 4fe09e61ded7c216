"""A user's live ``Subscribe`` stream, collected in the background (shared by test suites)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import grpc

from runwire.bridge.v1 import bridge_pb2, bridge_pb2_grpc
from runwire.common.v1 import context_pb2, event_pb2
from runwire_common.names import TERMINAL_EVENT_TYPES


@dataclass
class Watcher:
    """The events one ``Subscribe`` stream delivered so far, in order.

    ``timeout_s`` bounds every wait; ``settle_s`` is how long
    :meth:`until_terminal` keeps collecting after the terminal event, so events
    wrongly sent after it show up in its result (:meth:`after_terminal` finds them).
    """

    timeout_s: float = 10.0
    settle_s: float = 0.0
    events: list[event_pb2.RunEvent] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def of(self, run_id: str) -> list[event_pb2.RunEvent]:
        return [e for e in self.events if e.run_id == run_id]

    async def until(self, run_id: str, event_type: str) -> None:
        """Wait until an event of ``event_type`` arrived for ``run_id``."""
        async with asyncio.timeout(self.timeout_s):
            while not any(e.type == event_type for e in self.of(run_id)):
                self.changed.clear()
                await self.changed.wait()

    async def until_terminal(self, run_id: str) -> list[event_pb2.RunEvent]:
        """The run's events once its terminal event arrived (and ``settle_s`` later)."""
        async with asyncio.timeout(self.timeout_s):
            while not any(e.type in TERMINAL_EVENT_TYPES for e in self.of(run_id)):
                self.changed.clear()
                await self.changed.wait()
        if self.settle_s:
            await asyncio.sleep(self.settle_s)
        return self.of(run_id)

    def after_terminal(self) -> list[event_pb2.RunEvent]:
        """Events delivered for a run after its terminal event (there must be none)."""
        ended: set[str] = set()
        strays: list[event_pb2.RunEvent] = []
        for e in self.events:
            if e.run_id in ended:
                strays.append(e)
            elif e.type in TERMINAL_EVENT_TYPES:
                ended.add(e.run_id)
        return strays


@asynccontextmanager
async def watching(
    bridge: bridge_pb2_grpc.BridgeServiceAsyncStub,
    ctx: context_pb2.UserContext,
    *,
    timeout_s: float = 10.0,
    settle_s: float = 0.0,
) -> AsyncIterator[Watcher]:
    """Subscribe (live events only) with ``ctx``; collect until the block ends.

    Yields once the bridge confirmed the subscription (its ``replay_complete``,
    within ``timeout_s``), so every event published inside the block is collected.
    """
    watcher = Watcher(timeout_s=timeout_s, settle_s=settle_s)
    call = bridge.Subscribe(bridge_pb2.SubscribeRequest(user_context=ctx))
    ready = asyncio.Event()

    async def pump() -> None:
        async for item in call:
            if item.HasField("replay_complete"):
                ready.set()
            elif item.HasField("event"):
                watcher.events.append(item.event)
                watcher.changed.set()

    task = asyncio.create_task(pump())
    try:
        async with asyncio.timeout(timeout_s):
            await ready.wait()
        yield watcher
    finally:
        call.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await task
