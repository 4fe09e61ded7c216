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
import redis.asyncio as aioredis
from pydantic import SecretStr

from bridge_service.app import open_bus, running_service
from bridge_service.bus import EventBus
from bridge_service.event_ids import EventId, parse_event_id
from bridge_service.memory_bus import MemoryEventBus
from bridge_service.redis_bus import RedisEventBus
from bridge_service.settings import BridgeSettings
from runwire.bridge.v1 import bridge_pb2, bridge_pb2_grpc
from runwire.common.v1 import context_pb2, event_pb2
from runwire_common.server import GrpcServer

READ_TIMEOUT_S = 5.0

SubscribeCall = grpc.aio.UnaryStreamCall[bridge_pb2.SubscribeRequest, bridge_pb2.SubscribeResponse]


Bus = MemoryEventBus | RedisEventBus
BACKENDS = ("memory", "redis")


@dataclass
class Bridge:
    server: GrpcServer
    bus: Bus
    channel: grpc.aio.Channel
    stub: bridge_pb2_grpc.BridgeServiceAsyncStub

    async def publish(self, ctx: context_pb2.UserContext, *events: event_pb2.RunEvent) -> list[str]:
        return list((await self.publish_response(ctx, *events)).event_ids)

    async def publish_response(
        self, ctx: context_pb2.UserContext, *events: event_pb2.RunEvent
    ) -> bridge_pb2.PublishResponse:
        return await self.stub.Publish(
            bridge_pb2.PublishRequest(user_context=ctx, events=events), timeout=READ_TIMEOUT_S
        )

    async def retained(self, user_id: str) -> list[str]:
        return await retained(self.bus, user_id)

    def subscribe(self, ctx: context_pb2.UserContext, after: str = "", **kwargs: Any) -> SubscribeCall:
        return self.stub.Subscribe(bridge_pb2.SubscribeRequest(user_context=ctx, after=after), **kwargs)

    async def wait_for_subscribers(self, user_id: str, count: int) -> None:
        async with asyncio.timeout(READ_TIMEOUT_S):
            while self.bus.subscriber_count(user_id) != count:
                await asyncio.sleep(0.01)


def settings_for(key_spec: str, **overrides: Any) -> BridgeSettings:
    """Settings of a test bridge: no delivery canary unless asked (its channels would be counted)."""
    overrides.setdefault("canary_interval_s", 0)
    return BridgeSettings(attestation_keys=SecretStr(key_spec), host="127.0.0.1", port=0, **overrides)


SettingsFactory = Callable[..., BridgeSettings]


async def retained(bus: EventBus, user_id: str) -> list[str]:
    if isinstance(bus, MemoryEventBus):
        return bus.retained(user_id)
    assert isinstance(bus, RedisEventBus)
    return await bus.retained(user_id)


@asynccontextmanager
async def open_bridge(settings: BridgeSettings) -> AsyncIterator[Bridge]:
    """A real server on the configured backend (memory, or Redis with its own client)."""
    async with open_bus(settings) as bus, running_service(settings, bus=bus) as server:
        assert isinstance(bus, MemoryEventBus | RedisEventBus)
        async with grpc.aio.insecure_channel(server.address) as channel:
            yield Bridge(server, bus, channel, bridge_pb2_grpc.BridgeServiceStub(channel))


async def delete_keys(redis_url: str, prefix: str) -> None:
    """Remove every key a test created under ``prefix``."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


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
