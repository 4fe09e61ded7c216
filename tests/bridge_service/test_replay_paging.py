"""A resume from a very old cursor reads the log in bounded pages, on demand, on both backends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from bridge_service.app import open_bus
from bridge_service.bus import (
    REPLAY_PAGE,
    BusItem,
    EventBus,
    Events,
    Gap,
    ReplayComplete,
    RunEvent,
    SubscriberOverflow,
)
from bridge_service.memory_bus import MemoryEventBus
from bridge_service.redis_bus import RedisEventBus
from runwire_common.ids import new_id
from tests.bridge_service.harness import ContextFactory, SettingsFactory
from tests.bridge_service.stream_harness import FabricClient, open_stream_bridge

LONG_LOG = 20_000
PUBLISH_BATCH = 500


async def publish_long_log(bus: EventBus, user: str, count: int) -> list[str]:
    ids: list[str] = []
    for start in range(0, count, PUBLISH_BATCH):
        run = new_id("run")  # one run per batch keeps the fencing state small
        batch = [
            RunEvent(user_id=user, run_id=run, seq=seq, type="agent_thinking", payload_json="{}")
            for seq in range(1, min(PUBLISH_BATCH, count - start) + 1)
        ]
        ids += (await bus.publish(user, batch)).event_ids
    return ids


async def next_item(subscription: AsyncGenerator[BusItem, None]) -> BusItem:
    async with asyncio.timeout(10):
        return await anext(subscription)


async def test_a_resume_from_the_start_of_a_long_log_reads_it_in_pages_and_delivers_each_event_once(
    make_settings: SettingsFactory,
) -> None:
    user = new_id("user")
    settings = make_settings(log_capacity=LONG_LOG, log_max_bytes=64 * 1024 * 1024, max_subscribe_batch=100)
    async with open_bus(settings) as bus:
        published = await publish_long_log(bus, user, LONG_LOG)
        assert len(published) == LONG_LOG
        assert isinstance(bus, MemoryEventBus | RedisEventBus)
        reads = bus.log_reads
        before = reads.events
        subscription = bus.subscribe(user, after=published[0], max_batch=100)
        try:
            first = await next_item(subscription)
            assert isinstance(first, Events)
            # On demand: one page read so far, not the whole log.
            assert reads.events - before <= REPLAY_PAGE
            received = [event.event_id for event in first.parse()]
            while True:
                item = await next_item(subscription)
                if isinstance(item, ReplayComplete):
                    break
                assert isinstance(item, Events), f"unexpected {item!r}"
                received += [event.event_id for event in item.parse()]
            assert item.replayed == LONG_LOG - 1
            assert item.resume_after == published[-1]
        finally:
            await subscription.aclose()
        assert received == published[1:]  # every event once, in order
        assert reads.largest <= REPLAY_PAGE
        assert reads.events - before >= LONG_LOG - 1
        assert reads.reads >= (LONG_LOG - 1) // REPLAY_PAGE


async def test_a_cursor_older_than_the_log_gets_one_gap_then_the_whole_log_in_pages(
    make_settings: SettingsFactory,
) -> None:
    user = new_id("user")
    capacity = 3 * REPLAY_PAGE + 7
    async with open_bus(make_settings(log_capacity=capacity)) as bus:
        published = await publish_long_log(bus, user, capacity + 50)
        subscription = bus.subscribe(user, after=published[10], max_batch=REPLAY_PAGE)
        try:
            items = [await next_item(subscription)]
            while not isinstance(items[-1], ReplayComplete):
                items.append(await next_item(subscription))
        finally:
            await subscription.aclose()
        assert isinstance(items[0], Gap)
        assert items[0].oldest_event_id == published[50]
        assert not any(isinstance(item, Gap) for item in items[1:])
        received = [e.event_id for item in items if isinstance(item, Events) for e in item.parse()]
        assert received == published[50:]
        assert isinstance(bus, MemoryEventBus | RedisEventBus)
        assert bus.log_reads.largest <= REPLAY_PAGE


async def test_events_trimmed_while_a_paged_replay_waits_end_it_with_its_cursor_and_the_resume_reports_a_gap(
    make_settings: SettingsFactory,
) -> None:
    user = new_id("user")
    capacity = 2 * REPLAY_PAGE
    async with open_bus(make_settings(log_capacity=capacity)) as bus:
        published = await publish_long_log(bus, user, capacity)
        subscription = bus.subscribe(user, after=published[0], max_batch=REPLAY_PAGE)
        delivered: list[str] = []
        ended_at = ""
        try:
            first = await next_item(subscription)
            assert isinstance(first, Events)
            delivered += [e.event_id for e in first.parse()]
            # The rest of the replay is trimmed away before the subscriber asks for it.
            await publish_long_log(bus, user, capacity)
            try:
                while True:
                    item = await next_item(subscription)
                    assert isinstance(item, Events), f"unexpected {item!r}"
                    delivered += [e.event_id for e in item.parse()]
            except SubscriberOverflow as exc:
                ended_at = exc.cursor
        finally:
            await subscription.aclose()
        assert delivered == published[1 : 1 + len(delivered)]
        assert ended_at == delivered[-1]
        resumed = bus.subscribe(user, after=ended_at)
        try:
            assert isinstance(await next_item(resumed), Gap)
        finally:
            await resumed.aclose()


async def test_a_fabric_resume_reads_the_log_only_as_fast_as_the_gateway_grants_credit(
    make_settings: SettingsFactory, make_context: ContextFactory
) -> None:
    ctx = make_context()
    settings = make_settings(log_capacity=LONG_LOG, log_max_bytes=64 * 1024 * 1024)
    async with open_stream_bridge(settings) as bridge:
        bus = bridge.bus.inner
        assert isinstance(bus, MemoryEventBus | RedisEventBus)
        published = await publish_long_log(bus, ctx.user_id, LONG_LOG)
        fabric = FabricClient(bridge.stub)
        try:
            before = bus.log_reads.events
            await fabric.add(ctx, 1, after=published[0], initial_credit=300, max_batch=100)
            await fabric.wait_for_events(1, 300)
            # A round trip on the same stream: the pump had every chance to read ahead by now.
            other = make_context()
            await fabric.add(other, 2)
            await fabric.wait_for_replay(2)
            assert len(fabric.events(1)) == 300
            assert bus.log_reads.events - before <= 300 + REPLAY_PAGE

            await fabric.credit(1, LONG_LOG)
            done = await fabric.wait_for_replay(1)
        finally:
            await fabric.close()
        assert done.replayed == LONG_LOG - 1
        assert [event.event_id for event in fabric.events(1)] == published[1:]
        assert bus.log_reads.largest <= REPLAY_PAGE
