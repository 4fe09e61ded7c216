"""FabricStream driven in process, so a test decides when the writer runs.

The writer is the ``serve`` generator: while the test does not ask for the
next response, everything that becomes ready waits for it, exactly as it does
while a write is in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from prometheus_client import CollectorRegistry

from bridge_service.fabric import FabricOptions, FabricStream
from bridge_service.memory_bus import MemoryEventBus
from bridge_service.metrics import BridgeMetrics
from runwire.bridge.v1 import bridge_pb2
from runwire.common.v1 import context_pb2
from runwire_common.attestation import ContextAttestor
from runwire_common.errors import Unavailable
from tests.bridge_service.harness import ContextFactory, event

TIMEOUT_S = 5.0


class DrivenStream:
    def __init__(
        self, bus: MemoryEventBus, attestor: ContextAttestor, options: FabricOptions | None = None
    ) -> None:
        self.bus = bus
        self.registry = CollectorRegistry()
        self.draining = asyncio.Event()
        self.requests: asyncio.Queue[bridge_pb2.FabricRequest] = asyncio.Queue()
        stream = FabricStream(
            bus,
            attestor=attestor,
            metrics=BridgeMetrics(self.registry),
            draining=self.draining,
            options=options or FabricOptions(),
        )
        self.responses = stream.serve(self._requests())

    async def _requests(self) -> AsyncIterator[bridge_pb2.FabricRequest]:
        while True:
            yield await self.requests.get()

    def send(self, ctx: context_pb2.UserContext, **op: object) -> None:
        self.requests.put_nowait(bridge_pb2.FabricRequest(user_context=ctx, **op))  # type: ignore[arg-type]

    def add(self, ctx: context_pb2.UserContext, subscription_id: int, **fields: int | str) -> None:
        self.send(ctx, add=bridge_pb2.FabricAdd(subscription_id=subscription_id, **fields))  # type: ignore[arg-type]

    async def next(self) -> bridge_pb2.FabricResponse:
        """The writer's next response (it runs only now)."""
        async with asyncio.timeout(TIMEOUT_S):
            return bridge_pb2.FabricResponse.FromString(await anext(self.responses))

    async def items_until(
        self, done: Callable[[list[bridge_pb2.FabricItem]], bool]
    ) -> list[bridge_pb2.FabricItem]:
        items: list[bridge_pb2.FabricItem] = []
        while not done(items):
            items += (await self.next()).items
        return items

    async def settle(self, done: Callable[[], bool]) -> None:
        """Let the reader and the pumps run until ``done`` (the writer stays paused)."""
        async with asyncio.timeout(TIMEOUT_S):
            while not done():
                await asyncio.sleep(0.001)

    def delivered(self) -> float:
        return self.registry.get_sample_value("runwire_bridge_fabric_events_delivered_total") or 0.0

    async def close(self) -> None:
        await self.responses.aclose()


@pytest.fixture
async def driven(attestor: ContextAttestor) -> AsyncIterator[DrivenStream]:
    bus = MemoryEventBus()
    stream = DrivenStream(bus, attestor)
    yield stream
    await stream.close()
    await bus.close()


def replayed(count: int) -> Callable[[list[bridge_pb2.FabricItem]], bool]:
    return lambda items: sum(item.HasField("replay_complete") for item in items) >= count


async def test_everything_that_became_ready_during_a_write_goes_out_in_one_response(
    driven: DrivenStream, make_context: ContextFactory
) -> None:
    users = [make_context() for _ in range(10)]
    for sid, ctx in enumerate(users, start=1):
        driven.add(ctx, sid)
    await driven.items_until(replayed(len(users)))

    for ctx in users:  # while the writer is busy elsewhere (here: not asked)
        await driven.bus.publish(ctx.user_id, [event(ctx, seq=1)])
    await driven.settle(lambda: driven.delivered() == len(users))

    response = await driven.next()
    assert sorted(item.subscription_id for item in response.items) == list(range(1, len(users) + 1))
    assert all(
        item.events.events[0].user_id == users[item.subscription_id - 1].user_id for item in response.items
    )


async def test_items_of_a_removed_subscription_still_waiting_are_dropped_even_when_its_id_is_reused(
    driven: DrivenStream, make_context: ContextFactory
) -> None:
    alice, bob = make_context(), make_context()
    driven.add(alice, 1)
    await driven.items_until(replayed(1))
    await driven.bus.publish(alice.user_id, [event(alice, seq=seq) for seq in range(1, 6)])
    await driven.settle(lambda: driven.delivered() == 5)  # queued for the writer, not written

    driven.send(alice, remove=bridge_pb2.FabricRemove(subscription_id=1))
    driven.add(bob, 1)
    await driven.settle(lambda: driven.bus.subscriber_count(bob.user_id) == 1)
    await driven.bus.publish(bob.user_id, [event(bob, seq=1)])

    items = await driven.items_until(lambda items: any(item.HasField("events") for item in items))
    owners = {e.user_id for item in items for e in item.events.events}
    assert owners == {bob.user_id}
    assert driven.bus.subscriber_count(alice.user_id) == 0


async def test_draining_ends_a_subscription_holding_events_back_at_the_last_event_sent(
    driven: DrivenStream, make_context: ContextFactory
) -> None:
    ctx = make_context()
    driven.add(ctx, 1, initial_credit=2, max_batch=10)
    await driven.items_until(replayed(1))
    published = await driven.bus.publish(ctx.user_id, [event(ctx, seq=seq) for seq in range(1, 6)])
    await driven.settle(lambda: driven.delivered() == 2)  # one pulled batch of 5, 3 held for credit

    driven.draining.set()
    items: list[bridge_pb2.FabricItem] = []
    with pytest.raises(Unavailable):
        while True:
            items += (await driven.next()).items
    sent = [e.event_id for item in items for e in item.events.events]
    [ended] = [item.ended for item in items if item.HasField("ended")]
    assert sent == list(published.event_ids[:2])
    assert (ended.code, ended.cursor) == (grpc.StatusCode.UNAVAILABLE.value[0], published.event_ids[1])
    assert driven.bus.subscriber_count(ctx.user_id) == 0


async def test_an_add_beyond_the_subscription_limit_ends_resource_exhausted(
    attestor: ContextAttestor, make_context: ContextFactory
) -> None:
    bus = MemoryEventBus()
    driven = DrivenStream(bus, attestor, FabricOptions(max_subscriptions=2))
    for sid in (1, 2, 3):
        driven.add(make_context(), sid)
    items = await driven.items_until(lambda items: len(items) >= 3)
    [ended] = [item for item in items if item.HasField("ended")]
    assert (ended.subscription_id, ended.ended.code) == (3, grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
    await driven.close()
    await bus.close()


async def test_when_the_gateway_stops_reading_the_stream_its_subscriptions_stop_pulling_and_fall_behind(
    attestor: ContextAttestor, make_context: ContextFactory
) -> None:
    bus = MemoryEventBus(subscriber_queue=5)
    driven = DrivenStream(bus, attestor, FabricOptions(max_queued_bytes=1))
    ctx = make_context()
    driven.add(ctx, 1)
    await driven.items_until(replayed(1))
    [first] = (await bus.publish(ctx.user_id, [event(ctx, seq=1)])).event_ids
    await driven.settle(lambda: driven.delivered() == 1)  # queued; the writer is not asked

    await bus.publish(ctx.user_id, [event(ctx, seq=seq) for seq in range(2, 7)])  # fills its queue
    for _ in range(10):  # a subscription that pulled would empty its queue now
        await asyncio.sleep(0)
    await bus.publish(ctx.user_id, [event(ctx, seq=7)])  # … so only one that stopped pulling overflows
    items = await driven.items_until(lambda items: any(item.HasField("ended") for item in items))

    assert [e.event_id for item in items for e in item.events.events] == [first]
    [ended] = [item.ended for item in items if item.HasField("ended")]
    assert (ended.code, ended.cursor) == (grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], first)
    await driven.close()
    await bus.close()
