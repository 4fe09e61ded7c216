"""A scripted BridgeService for the pump's failure paths (overflow, bridge away)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc

from runwire.bridge.v1 import bridge_pb2, bridge_pb2_grpc
from runwire.common.v1 import event_pb2

# One stream: items to yield, then the status to end with (None = stay open).
Script = tuple[list[bridge_pb2.SubscribeResponse], grpc.StatusCode | None]


def event(user_id: str, event_id: str, *, seq: int = 1, payload: str = '{"n": 1}') -> event_pb2.RunEvent:
    ev = event_pb2.RunEvent(
        event_id=event_id,
        seq=seq,
        type="agent_thinking",
        run_id="run_0123456789abcdef0123456789abcdef",
        thread_id="thread_0123456789abcdef0123456789ab",
        user_id=user_id,
        agent="scripted",
        payload_json=payload,
    )
    ev.timestamp.seconds = 1_800_000_000
    return ev


def item(ev: event_pb2.RunEvent) -> bridge_pb2.SubscribeResponse:
    return bridge_pb2.SubscribeResponse(event=ev)


def batch(*events: event_pb2.RunEvent) -> bridge_pb2.SubscribeResponse:
    """One stream message with several events (``SubscribeResponse.events``)."""
    return bridge_pb2.SubscribeResponse(events=bridge_pb2.EventBatch(events=events))


def gap(requested_after: str, oldest_event_id: str) -> bridge_pb2.SubscribeResponse:
    return bridge_pb2.SubscribeResponse(
        gap=bridge_pb2.Gap(requested_after=requested_after, oldest_event_id=oldest_event_id)
    )


def replay_complete(n: int = 0, resume_after: str = "") -> bridge_pb2.SubscribeResponse:
    return bridge_pb2.SubscribeResponse(
        replay_complete=bridge_pb2.ReplayComplete(replayed=n, resume_after=resume_after)
    )


class ScriptedBridge(bridge_pb2_grpc.BridgeServiceServicer):
    """Answers the n-th Subscribe with ``scripts[n]`` (the last script repeats)."""

    def __init__(self, scripts: list[Script] | Callable[[int], Script], *, delay_s: float = 0.0) -> None:
        self._scripts = scripts
        self._delay_s = delay_s
        self.afters: list[str] = []
        self.max_batches: list[int] = []
        # Loop time at which each stream's first item was sent.
        self.first_item_at: list[float] = []

    async def Subscribe(  # type: ignore[override]
        self, request: bridge_pb2.SubscribeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bridge_pb2.SubscribeResponse]:
        n = len(self.afters)
        self.afters.append(request.after)
        self.max_batches.append(request.max_batch)
        if callable(self._scripts):
            items, status = self._scripts(n)
        else:
            items, status = self._scripts[min(n, len(self._scripts) - 1)]
        await asyncio.sleep(self._delay_s)
        self.first_item_at.append(asyncio.get_running_loop().time())
        for it in items:
            yield it
        if status is None:
            await asyncio.Event().wait()
        else:
            await context.abort(status, "scripted end")

    async def Publish(  # type: ignore[override]
        self, request: bridge_pb2.PublishRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> bridge_pb2.PublishResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "scripted bridge")


@asynccontextmanager
async def serving(
    servicer: Any,
    add: Callable[[Any, grpc.aio.Server], None] = bridge_pb2_grpc.add_BridgeServiceServicer_to_server,
) -> AsyncIterator[str]:
    """A real gRPC server on a loopback port with ``servicer`` (a bridge unless ``add`` says otherwise)."""
    server = grpc.aio.server()
    add(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
