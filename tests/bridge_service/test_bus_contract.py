"""The EventBus contract, bus-level, on both backends: replay, live, cursors, fencing, overflow, drain."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from bridge_service.app import open_bus
from bridge_service.bus import (
    BusDraining,
    BusItem,
    EventBus,
    Events,
    Gap,
    ReplayComplete,
    RunEvent,
    SubscriberOverflow,
)
from runwire_common.errors import InvalidArgument
from runwire_common.ids import new_id
from tests.bridge_service.harness import SettingsFactory, retained

RUN = "run_0123456789abcdefghij"


def ev(user_id: str, seq: int = 1, run_id: str = RUN, type: str = "agent_thinking") -> RunEvent:
    return RunEvent(user_id=user_id, run_id=run_id, seq=seq, type=type, payload_json="{}")


async def take(subscription: AsyncGenerator[BusItem, None], count: int) -> list[BusItem]:
    async with asyncio.timeout(5):
        return [await anext(subscription) for _ in range(count)]


def ids(items: list[BusItem]) -> list[str]:
    return [event.event_id for item in items if isinstance(item, Events) for event in item.parse()]


async def publish(bus: EventBus, user_id: str, *events: RunEvent) -> list[str]:
    return list((await bus.publish(user_id, events)).event_ids)


async def test_replay_after_a_cursor_then_live_events(make_settings: SettingsFactory) -> None:
    user = new_id("user")
    async with open_bus(make_settings()) as bus:
        first = await publish(bus, user, *(ev(user, s) for s in range(1, 5)))
        subscription = bus.subscribe(user, after=first[1])
        items = await take(subscription, 3)
        assert ids(items[:2]) == first[2:]
        assert items[2] == ReplayComplete(replayed=2, resume_after=first[-1])
        live = await publish(bus, user, ev(user, 5), ev(user, 6))
        assert ids(await take(subscription, 2)) == live
        await subscription.aclose()
        assert bus.subscriber_count(user) == 0


async def test_events_published_during_the_replay_arrive_once_after_it(
    make_settings: SettingsFactory,
) -> None:
    user = new_id("user")
    async with open_bus(make_settings()) as bus:
        first = await publish(bus, user, *(ev(user, s) for s in range(1, 4)))
        subscription = bus.subscribe(user, after=first[0])
        replayed_first = await anext(subscription)  # one event per item: max_batch defaults to 1
        during = await publish(bus, user, ev(user, 4), ev(user, 5))
        rest = await take(subscription, 4)
        assert ids([replayed_first, *rest]) == first[1:] + during
        await subscription.aclose()


async def test_a_live_only_cursor_and_an_empty_logs_cursor_resume_exactly(
    make_settings: SettingsFactory,
) -> None:
    user = new_id("user")
    async with open_bus(make_settings()) as bus:
        live = bus.subscribe(user)  # the log is empty (never published)
        [complete] = await take(live, 1)
        assert isinstance(complete, ReplayComplete) and complete.replayed == 0 and complete.resume_after
        await live.aclose()
        missed = await publish(bus, user, ev(user, 1), ev(user, 2))
        resumed = bus.subscribe(user, after=complete.resume_after)
        items = await take(resumed, 3)
        assert ids(items) == missed
        assert not any(isinstance(i, Gap) for i in items)
        assert items[2] == ReplayComplete(replayed=2, resume_after=missed[-1])
        await resumed.aclose()


async def test_several_subscribers_of_one_user_each_get_everything(make_settings: SettingsFactory) -> None:
    user, other = new_id("user"), new_id("user")
    async with open_bus(make_settings()) as bus:
        subs = [bus.subscribe(user) for _ in range(3)]
        foreign = bus.subscribe(other)
        for sub in [*subs, foreign]:
            await take(sub, 1)
        published = await publish(bus, user, *(ev(user, s) for s in range(1, 6)))
        for sub in subs:
            assert ids(await take(sub, 5)) == published
        [other_id] = await publish(bus, other, ev(other))
        assert ids(await take(foreign, 1)) == [other_id]
        for sub in [*subs, foreign]:
            await sub.aclose()


async def test_fencing_at_the_bus(make_settings: SettingsFactory) -> None:
    user = new_id("user")
    async with open_bus(make_settings()) as bus:
        first = await bus.publish(user, [ev(user, 1), ev(user, 2), ev(user, 2), ev(user, 0)])
        assert first.seqs == (1, 2, 0, 3)
        assert first.event_ids[2] == "" and len(first.stored) == 3
        results = await asyncio.gather(
            *(bus.publish(user, [ev(user, 0, type="agent_death")]) for _ in range(20))
        )
        assert sorted(r.seqs[0] for r in results) == [0] * 19 + [4]
        assert len(await retained(bus, user)) == 4


async def test_foreign_event_in_a_batch_stores_nothing(make_settings: SettingsFactory) -> None:
    alice, bob = new_id("user"), new_id("user")
    async with open_bus(make_settings()) as bus:
        with pytest.raises(InvalidArgument):
            await bus.publish(alice, [ev(alice), ev(bob)])
        assert await retained(bus, alice) == []


async def test_malformed_cursor_is_refused_before_registering(make_settings: SettingsFactory) -> None:
    user = new_id("user")
    async with open_bus(make_settings()) as bus:
        with pytest.raises(InvalidArgument, match="after"):
            await anext(bus.subscribe(user, after="12-x"))
        assert bus.subscriber_count(user) == 0


async def test_overflow_ends_only_the_full_subscriber_with_its_cursor(make_settings: SettingsFactory) -> None:
    user = new_id("user")
    async with open_bus(make_settings(subscriber_queue=2, max_events_per_publish=2)) as bus:
        [before] = await publish(bus, user, ev(user, 1))
        slow, fast = bus.subscribe(user, after=before), bus.subscribe(user, after=before)
        await take(slow, 1)
        await take(fast, 1)
        for seq in range(2, 10):  # Redis lets a second queue's worth wait in the stream
            [event_id] = await publish(bus, user, ev(user, seq))
            assert ids(await take(fast, 1)) == [event_id]
        async with asyncio.timeout(5):
            while bus.subscriber_count(user) != 1:
                await asyncio.sleep(0.01)
        with pytest.raises(SubscriberOverflow) as caught:
            await take(slow, 1)
        assert caught.value.cursor == before
        await fast.aclose()


async def test_drain_ends_live_subscriptions_and_refuses_new_ones(make_settings: SettingsFactory) -> None:
    user = new_id("user")
    async with open_bus(make_settings()) as bus:
        [event_id] = await publish(bus, user, ev(user))
        live = bus.subscribe(user, after=event_id)
        assert await take(live, 1) == [ReplayComplete(replayed=0, resume_after=event_id)]
        await bus.drain()
        with pytest.raises(BusDraining) as caught:
            await take(live, 1)
        assert caught.value.cursor == event_id
        with pytest.raises(BusDraining):
            await anext(bus.subscribe(user, after="1-0"))
        assert bus.subscriber_count(user) == 0
        assert len(await publish(bus, user, ev(user, seq=2))) == 1
