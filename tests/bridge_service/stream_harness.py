"""A bridge for the stream tests whose servicer, metrics and bus the test holds.

Composed like :func:`bridge_service.app.running_service`, with the servicer's
:meth:`~bridge_service.servicer.BridgeServicer.drain` run before the bus's in
the drain hook, so a test can drain the server and watch the streams end.
"""

from __future__ import annotations

import asyncio
import functools
from collections import Counter, defaultdict
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from bridge_service.app import open_bus
from bridge_service.bus import BusItem, EventBus, PublishResult, RunEvent
from bridge_service.metrics import BridgeMetrics
from bridge_service.servicer import SERVICE_NAME, BridgeServicer, register
from bridge_service.settings import BridgeSettings
from bridge_service.validation import PublishLimits
from runwire.bridge.v1 import bridge_pb2, bridge_pb2_grpc
from runwire.common.v1 import context_pb2, event_pb2
from runwire_common.server import GrpcServer, ServiceBinding

READ_TIMEOUT_S = 5.0


class GatedBus:
    """An :class:`EventBus` whose ``publish`` for the users in ``held`` waits until they are released."""

    def __init__(self, bus: EventBus) -> None:
        self.inner = bus
        self.held: dict[str, asyncio.Event] = {}
        self.waiting: dict[str, asyncio.Event] = {}
        self.entered: Counter[str] = Counter()  # publish calls per user, held ones included

    def hold(self, user_id: str) -> None:
        self.held[user_id] = asyncio.Event()
        self.waiting[user_id] = asyncio.Event()

    def release(self, user_id: str) -> None:
        self.held.pop(user_id).set()

    async def publish(self, user_id: str, events: Sequence[RunEvent]) -> PublishResult:
        self.entered[user_id] += 1
        gate = self.held.get(user_id)
        if gate is not None:
            self.waiting[user_id].set()
            await gate.wait()
        return await self.inner.publish(user_id, events)

    def subscribe(
        self, user_id: str, *, after: str = "", max_batch: int = 1
    ) -> AsyncGenerator[BusItem, None]:
        return self.inner.subscribe(user_id, after=after, max_batch=max_batch)

    def subscriber_count(self, user_id: str) -> int:
        return self.inner.subscriber_count(user_id)

    async def drain(self) -> None:
        await self.inner.drain()

    async def close(self) -> None:
        await self.inner.close()


@dataclass
class StreamBridge:
    server: GrpcServer
    servicer: BridgeServicer
    registry: CollectorRegistry
    bus: GatedBus
    stub: bridge_pb2_grpc.BridgeServiceAsyncStub
    channel: grpc.aio.Channel
    drained: bool = False

    async def drain(self) -> None:
        """Drain the server as SIGTERM would (the servicer first, then the bus)."""
        self.drained = True

        async def hook() -> None:
            await self.servicer.drain()
            await self.bus.drain()

        await self.server.drain(hook)

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return value if value is not None else 0.0


@asynccontextmanager
async def open_stream_bridge(
    settings: BridgeSettings, **servicer_options: Any
) -> AsyncIterator[StreamBridge]:
    registry = CollectorRegistry()
    async with open_bus(settings) as inner:
        bus = GatedBus(inner)
        servicer = BridgeServicer(
            bus,
            attestor=settings.attestor(),
            limits=PublishLimits(
                max_events=settings.max_events_per_publish, max_payload_bytes=settings.max_payload_bytes
            ),
            metrics=BridgeMetrics(registry),
            max_batch=settings.max_subscribe_batch,
            **servicer_options,
        )
        server = GrpcServer(settings, [ServiceBinding(SERVICE_NAME, functools.partial(register, servicer))])
        await server.start()
        try:
            async with grpc.aio.insecure_channel(server.address) as channel:
                running = StreamBridge(
                    server, servicer, registry, bus, bridge_pb2_grpc.BridgeServiceStub(channel), channel
                )
                try:
                    yield running
                finally:
                    if not running.drained:
                        await running.drain()
        finally:
            await server.drain()  # a no-op after the drain above; stops the server if the channel failed
            await bus.close()


PublishCall = grpc.aio.StreamStreamCall[bridge_pb2.PublishStreamRequest, bridge_pb2.PublishStreamResponse]


async def read_ack(call: PublishCall) -> bridge_pb2.PublishStreamResponse:
    async with asyncio.timeout(READ_TIMEOUT_S):
        response = await call.read()
    assert isinstance(response, bridge_pb2.PublishStreamResponse), f"stream ended: {response!r}"
    return response


async def read_acks(call: PublishCall, count: int) -> dict[int, bridge_pb2.PublishStreamResponse]:
    """The next ``count`` acknowledgements, by batch_id."""
    acks: dict[int, bridge_pb2.PublishStreamResponse] = {}
    for _ in range(count):
        ack = await read_ack(call)
        assert ack.batch_id not in acks, f"batch {ack.batch_id} acknowledged twice"
        acks[ack.batch_id] = ack
    return acks


FabricCall = grpc.aio.StreamStreamCall[bridge_pb2.FabricRequest, bridge_pb2.FabricResponse]


class FabricClient:
    """A gateway's side of one Fabric stream: requests out, items collected per subscription."""

    def __init__(self, stub: bridge_pb2_grpc.BridgeServiceAsyncStub) -> None:
        self.call: FabricCall = stub.Fabric()
        self.items: dict[int, list[bridge_pb2.FabricItem]] = defaultdict(list)
        self.responses: list[bridge_pb2.FabricResponse] = []
        self.error: grpc.aio.AioRpcError | None = None
        self.finished = False
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while (response := await self.call.read()) is not grpc.aio.EOF:
                assert isinstance(response, bridge_pb2.FabricResponse)
                self.responses.append(response)
                for item in response.items:
                    self.items[item.subscription_id].append(item)
                self._changed.set()
        except grpc.aio.AioRpcError as exc:
            self.error = exc
        finally:
            self.finished = True
            self._changed.set()

    async def send(self, request: bridge_pb2.FabricRequest) -> None:
        await self.call.write(request)

    async def add(
        self,
        ctx: context_pb2.UserContext,
        subscription_id: int,
        *,
        after: str = "",
        max_batch: int = 0,
        initial_credit: int = 0,
    ) -> None:
        add = bridge_pb2.FabricAdd(
            subscription_id=subscription_id, after=after, max_batch=max_batch, initial_credit=initial_credit
        )
        await self.send(bridge_pb2.FabricRequest(user_context=ctx, add=add))

    async def remove(self, ctx: context_pb2.UserContext, subscription_id: int) -> None:
        remove = bridge_pb2.FabricRemove(subscription_id=subscription_id)
        await self.send(bridge_pb2.FabricRequest(user_context=ctx, remove=remove))

    async def credit(self, subscription_id: int, events: int) -> None:
        credit = bridge_pb2.FabricCredit(subscription_id=subscription_id, events=events)
        await self.send(bridge_pb2.FabricRequest(credits=[credit]))

    async def wait_until(self, done: Callable[[], bool], what: str = "condition") -> None:
        async with asyncio.timeout(READ_TIMEOUT_S):
            while not done():
                if self.finished:
                    raise AssertionError(f"the stream ended ({self.error!r}) before {what}")
                self._changed.clear()
                await self._changed.wait()

    def events(self, subscription_id: int) -> list[event_pb2.RunEvent]:
        return [
            e for item in self.items[subscription_id] if item.HasField("events") for e in item.events.events
        ]

    def kinds(self, subscription_id: int) -> list[str]:
        return [str(item.WhichOneof("item")) for item in self.items[subscription_id]]

    def ended(self, subscription_id: int) -> bridge_pb2.FabricEnded | None:
        ended = [item.ended for item in self.items[subscription_id] if item.HasField("ended")]
        assert len(ended) <= 1, f"subscription {subscription_id} ended twice"
        return ended[0] if ended else None

    def replay_complete(self, subscription_id: int) -> bridge_pb2.ReplayComplete | None:
        done = [
            item.replay_complete for item in self.items[subscription_id] if item.HasField("replay_complete")
        ]
        return done[0] if done else None

    async def wait_for_events(self, subscription_id: int, count: int) -> list[event_pb2.RunEvent]:
        await self.wait_until(lambda: len(self.events(subscription_id)) >= count, f"{count} events")
        return self.events(subscription_id)

    async def wait_for_replay(self, subscription_id: int) -> bridge_pb2.ReplayComplete:
        await self.wait_until(lambda: self.replay_complete(subscription_id) is not None, "replay_complete")
        done = self.replay_complete(subscription_id)
        assert done is not None
        return done

    async def wait_for_end(self, subscription_id: int) -> bridge_pb2.FabricEnded:
        await self.wait_until(lambda: self.ended(subscription_id) is not None, f"{subscription_id} ended")
        ended = self.ended(subscription_id)
        assert ended is not None
        return ended

    async def close(self) -> None:
        self.call.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


def code_of(status: grpc.StatusCode) -> int:
    number: int = status.value[0]
    return number
