"""A scripted BridgeService for the fabric's failure paths (overflow, bridge away).

Scripts are written as the items one subscription yields (the
``SubscribeResponse`` helpers below, which say the same thing as a
``FabricItem``) and the status it ends with; the n-th ``FabricAdd`` on any
stream plays ``scripts[n]`` (the last script repeats).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import grpc

from gateway.auth import Identity
from gateway.calls import ContextMinter
from gateway.fabric import BridgeReplicas
from gateway.feeds import Feeds
from gateway.sink import EventSink, OutboxLimits
from gateway.stats import GatewayStats
from gateway.subscription import FabricPolicy
from runwire.bridge.v1 import bridge_pb2, bridge_pb2_grpc
from runwire.common.v1 import event_pb2
from runwire_common.attestation import ContextAttestor
from runwire_common.owners import Owner

# One subscription: items to yield, then the status to end with (None = stay open).
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
    """Several events in one item (``EventBatch``)."""
    return bridge_pb2.SubscribeResponse(events=bridge_pb2.EventBatch(events=events))


def gap(requested_after: str, oldest_event_id: str) -> bridge_pb2.SubscribeResponse:
    return bridge_pb2.SubscribeResponse(
        gap=bridge_pb2.Gap(requested_after=requested_after, oldest_event_id=oldest_event_id)
    )


def replay_complete(n: int = 0, resume_after: str = "") -> bridge_pb2.SubscribeResponse:
    return bridge_pb2.SubscribeResponse(
        replay_complete=bridge_pb2.ReplayComplete(replayed=n, resume_after=resume_after)
    )


def fabric_item(sid: int, it: bridge_pb2.SubscribeResponse) -> bridge_pb2.FabricItem:
    kind = it.WhichOneof("item")
    if kind == "event":
        return bridge_pb2.FabricItem(subscription_id=sid, events=bridge_pb2.EventBatch(events=[it.event]))
    if kind == "events":
        return bridge_pb2.FabricItem(subscription_id=sid, events=it.events)
    if kind == "gap":
        return bridge_pb2.FabricItem(subscription_id=sid, gap=it.gap)
    return bridge_pb2.FabricItem(subscription_id=sid, replay_complete=it.replay_complete)


class ScriptedBridge(bridge_pb2_grpc.BridgeServiceServicer):
    """Answers the n-th ``FabricAdd`` with ``scripts[n]`` (the last script repeats)."""

    def __init__(self, scripts: list[Script] | Callable[[int], Script], *, delay_s: float = 0.0) -> None:
        self._scripts = scripts
        self._delay_s = delay_s
        self.afters: list[str] = []
        self.max_batches: list[int] = []
        self.initial_credits: list[int] = []
        self.removed: list[int] = []
        self.credits: dict[int, int] = {}
        # Loop time at which each subscription's first item was sent.
        self.first_item_at: list[float] = []

    def _script(self, n: int) -> Script:
        if callable(self._scripts):
            return self._scripts(n)
        return self._scripts[min(n, len(self._scripts) - 1)]

    async def Fabric(  # type: ignore[override]
        self,
        requests: AsyncIterator[bridge_pb2.FabricRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[bridge_pb2.FabricResponse]:
        out: asyncio.Queue[bridge_pb2.FabricResponse] = asyncio.Queue()
        plays: dict[int, asyncio.Task[None]] = {}

        async def play(sid: int, script: Script) -> None:
            items, status = script
            await asyncio.sleep(self._delay_s)
            self.first_item_at.append(asyncio.get_running_loop().time())
            for it in items:
                out.put_nowait(bridge_pb2.FabricResponse(items=[fabric_item(sid, it)]))
            if status is not None:
                ended = bridge_pb2.FabricEnded(code=status.value[0], message="scripted end")
                out.put_nowait(
                    bridge_pb2.FabricResponse(items=[bridge_pb2.FabricItem(subscription_id=sid, ended=ended)])
                )

        async def read() -> None:
            async for request in requests:
                for credit in request.credits:
                    self.credits[credit.subscription_id] = (
                        self.credits.get(credit.subscription_id, 0) + credit.events
                    )
                op = request.WhichOneof("op")
                if op == "add":
                    script = self._script(len(self.afters))
                    self.afters.append(request.add.after)
                    self.max_batches.append(request.add.max_batch)
                    self.initial_credits.append(request.add.initial_credit)
                    plays[request.add.subscription_id] = asyncio.create_task(
                        play(request.add.subscription_id, script)
                    )
                elif op == "remove":
                    self.removed.append(request.remove.subscription_id)
                    task = plays.pop(request.remove.subscription_id, None)
                    if task is not None:
                        task.cancel()

        reader = asyncio.create_task(read())
        try:
            while True:
                yield await out.get()
        finally:
            reader.cancel()
            for task in [reader, *plays.values()]:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task

    async def Publish(  # type: ignore[override]
        self, request: bridge_pb2.PublishRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> bridge_pb2.PublishResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "scripted bridge")


class RecordingSocket:
    """Stands in for a :class:`~gateway.transport.GatewayConnection`: records each write (one flush)."""

    def __init__(self) -> None:
        self.writes: list[list[str]] = []

    async def send(self, text: str) -> None:
        self.writes.append([text])

    async def send_texts(self, texts: Any) -> None:
        self.writes.append(list(texts))

    @property
    def frames(self) -> list[str]:
        return [text for write in self.writes for text in write]


@asynccontextmanager
async def detached_sink(
    socket: RecordingSocket,
    stats: GatewayStats,
    attestor: ContextAttestor,
    *,
    user_id: str,
    tenant_id: str = "",
    **limits: int,
) -> AsyncIterator[EventSink]:
    """An :class:`EventSink` on ``socket`` that belongs to no feed (nothing listens at its bridge)."""
    replicas = BridgeReplicas("127.0.0.1:9", stats=stats)
    feeds = Feeds(replicas, policy=FabricPolicy(attempts=1, backoff_s=0.01, max_backoff_s=0.01), stats=stats)
    identity = Identity(user_id=user_id, tenant_id=tenant_id, roles=(), expires_at=2e9)
    stops: list[tuple[int, str]] = []
    sink = EventSink(
        socket,  # type: ignore[arg-type]
        owner=Owner(tenant_id, user_id),
        connection_id="conn_0123456789abcdef",
        minter=ContextMinter(attestor, identity, connection_id="conn_0123456789abcdef", ttl_s=60),
        feeds=feeds,
        limits=OutboxLimits(**limits),
        stats=stats,
        on_stop=lambda code, reason: stops.append((code, reason)),
    )
    try:
        yield sink
    finally:
        sink.leave()
        await replicas.close()


async def written(sink: EventSink) -> None:
    """Wait until ``sink`` has written everything it queued."""
    async with asyncio.timeout(5):
        while sink.depth:
            await asyncio.sleep(0.005)


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
