"""A real bridge on 127.0.0.1:0 and a real client, for the bridge tests."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from pydantic import SecretStr

from bridge_service.app import running_service
from bridge_service.event_ids import EventId, parse_event_id
from bridge_service.memory_bus import MemoryEventBus
from bridge_service.settings import BridgeSettings
from runwire.bridge.v1 import bridge_pb2, bridge_pb2_grpc
from runwire.common.v1 import context_pb2, event_pb2
from runwire_common.server import GrpcServer

READ_TIMEOUT_S = 5.0

SubscribeCall = grpc.aio.UnaryStreamCall[bridge_pb2.SubscribeRequest, bridge_pb2.SubscribeResponse]


@dataclass
class Bridge:
    server: GrpcServer
    bus: MemoryEventBus
    channel: grpc.aio.Channel
    stub: bridge_pb2_grpc.BridgeServiceAsyncStub

    async def publish(self, ctx: context_pb2.UserContext, *events: event_pb2.RunEvent) -> list[str]:
        response = await self.stub.Publish(
            bridge_pb2.PublishRequest(user_context=ctx, events=events), timeout=READ_TIMEOUT_S
        )
        return list(response.event_ids)

    def subscribe(self, ctx: context_pb2.UserContext, after: str = "", **kwargs: Any) -> SubscribeCall:
        return self.stub.Subscribe(bridge_pb2.SubscribeRequest(user_context=ctx, after=after), **kwargs)

    async def wait_for_subscribers(self, user_id: str, count: int) -> None:
        async with asyncio.timeout(READ_TIMEOUT_S):
            while self.bus.subscriber_count(user_id) != count:
                await asyncio.sleep(0.01)


def settings_for(key_spec: str, **overrides: Any) -> BridgeSettings:
    return BridgeSettings(attestation_keys=SecretStr(key_spec), host="127.0.0.1", port=0, **overrides)


@asynccontextmanager
async def open_bridge(settings: BridgeSettings) -> AsyncIterator[Bridge]:
    bus = MemoryEventBus(log_capacity=settings.log_capacity, subscriber_queue=settings.subscriber_queue)
    async with running_service(settings, bus=bus) as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            yield Bridge(server, bus, channel, bridge_pb2_grpc.BridgeServiceStub(channel))


def event(
    ctx: context_pb2.UserContext,
    *,
    run_id: str = "run_0123456789abcdef0123",
    seq: int = 1,
    type: str = "agent_thinking",
    payload: Any = None,
    payload_json: str | None = None,
) -> event_pb2.RunEvent:
    return event_pb2.RunEvent(
        user_id=ctx.user_id,
        run_id=run_id,
        thread_id="thread_0123456789abcdef",
        agent="scripted",
        seq=seq,
        type=type,
        payload_json=payload_json if payload_json is not None else json.dumps(payload or {"reasoning": "x"}),
    )


async def read_item(call: SubscribeCall) -> bridge_pb2.SubscribeResponse:
    async with asyncio.timeout(READ_TIMEOUT_S):
        item = await call.read()
    assert isinstance(item, bridge_pb2.SubscribeResponse), f"stream ended: {item!r}"
    return item


async def read_until_replay_complete(
    call: SubscribeCall,
) -> tuple[list[bridge_pb2.SubscribeResponse], int]:
    """Items before ``replay_complete``, and its ``replayed`` count."""
    items: list[bridge_pb2.SubscribeResponse] = []
    while True:
        item = await read_item(call)
        if item.HasField("replay_complete"):
            return items, item.replay_complete.replayed
        items.append(item)


async def read_events(call: SubscribeCall, count: int) -> list[event_pb2.RunEvent]:
    events: list[event_pb2.RunEvent] = []
    while len(events) < count:
        item = await read_item(call)
        assert item.HasField("event"), f"expected an event, got {item}"
        events.append(item.event)
    return events


def ids_of(events: list[event_pb2.RunEvent]) -> list[str]:
    return [e.event_id for e in events]


def strictly_increasing(ids: list[str]) -> bool:
    parsed: list[EventId] = [parse_event_id(i) for i in ids]
    return all(a < b for a, b in itertools.pairwise(parsed))


ContextFactory = Callable[..., context_pb2.UserContext]
