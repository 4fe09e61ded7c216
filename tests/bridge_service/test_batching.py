"""Batched Subscribe delivery (``SubscribeRequest.max_batch``), on both backends."""

from __future__ import annotations

import asyncio

import pytest

from bridge_service.bus import Events, ReplayComplete
from bridge_service.memory_bus import MemoryEventBus
from runwire.bridge.v1 import bridge_pb2
from runwire.common.v1 import context_pb2, event_pb2
from tests.bridge_service.harness import (
    READ_TIMEOUT_S,
    Bridge,
    ContextFactory,
    SettingsFactory,
    SubscribeCall,
    event,
    open_bridge,
    read_item,
)


def subscribe(
    bridge: Bridge, ctx: context_pb2.UserContext, *, after: str = "", max_batch: int
) -> SubscribeCall:
    return bridge.stub.Subscribe(
        bridge_pb2.SubscribeRequest(user_context=ctx, after=after, max_batch=max_batch)
    )


async def read_batches(call: SubscribeCall, count: int) -> tuple[list[list[event_pb2.RunEvent]], list[str]]:
    """Responses until ``count`` events arrived: the batches, and every response's kind in order."""
    batches: list[list[event_pb2.RunEvent]] = []
    kinds: list[str] = []
    while sum(len(b) for b in batches) < count:
        item = await read_item(call)
        kind = item.WhichOneof("item")
        assert kind is not None
        kinds.append(kind)
        if kind == "events":
            batches.append(list(item.events.events))
        elif kind == "event":
            batches.append([item.event])
    return batches, kinds


async def test_replay_then_live_arrive_in_order_in_batches_no_larger_than_asked(
    bridge: Bridge, make_context: ContextFactory
) -> None:
    ctx = make_context()
    replayed = await bridge.publish(ctx, *(event(ctx, seq=s) for s in range(1, 31)))
    call = subscribe(bridge, ctx, after=replayed[4], max_batch=8)
    batches, kinds = await read_batches(call, 25)
    assert kinds[:4] == ["events"] * 4  # 25 replayed events: 8 + 8 + 8 + 1
    complete = await read_item(call)
    assert complete.replay_complete.replayed == 25
    assert complete.replay_complete.resume_after == replayed[-1]
    live = await bridge.publish(ctx, *(event(ctx, seq=s) for s in range(31, 51)))
    more, more_kinds = await read_batches(call, 20)
    assert set(more_kinds) == {"events"}
    everything = [e for batch in batches + more for e in batch]
    assert [e.event_id for e in everything] == replayed[5:] + live
    assert [e.seq for e in everything] == list(range(6, 51))
    assert all(1 <= len(batch) <= 8 for batch in batches + more)
    call.cancel()


@pytest.mark.parametrize("max_batch", [0, 1])
async def test_max_batch_0_or_1_sends_one_event_per_response(
    bridge: Bridge, make_context: ContextFactory, max_batch: int
) -> None:
    ctx = make_context()
    replayed = await bridge.publish(ctx, *(event(ctx, seq=s) for s in range(1, 4)))
    call = subscribe(bridge, ctx, after=replayed[0], max_batch=max_batch)
    batches, kinds = await read_batches(call, 2)
    assert kinds == ["event", "event"]
    assert (await read_item(call)).HasField("replay_complete")
    live = await bridge.publish(ctx, *(event(ctx, seq=s) for s in range(4, 7)))
    more, more_kinds = await read_batches(call, 3)
    assert more_kinds == ["event"] * 3
    assert [batch[0].event_id for batch in batches + more] == replayed[1:] + live
    call.cancel()


async def test_the_bridge_caps_the_requested_batch(
    make_settings: SettingsFactory, make_context: ContextFactory
) -> None:
    async with open_bridge(make_settings(max_subscribe_batch=3)) as bridge:
        ctx = make_context()
        replayed = await bridge.publish(ctx, *(event(ctx, seq=s) for s in range(1, 11)))
        call = subscribe(bridge, ctx, after=replayed[0], max_batch=1000)
        batches, _ = await read_batches(call, 9)
        assert [len(b) for b in batches] == [3, 3, 3]
        assert [e.event_id for b in batches for e in b] == replayed[1:]
        call.cancel()


async def test_a_gap_comes_alone_before_the_batched_replay(
    make_settings: SettingsFactory, make_context: ContextFactory
) -> None:
    async with open_bridge(make_settings(log_capacity=5)) as bridge:
        ctx = make_context()
        await bridge.publish(ctx, *(event(ctx, seq=s) for s in range(1, 21)))
        retained = await bridge.retained(ctx.user_id)
        call = subscribe(bridge, ctx, after="1-0", max_batch=64)  # older than the log: a gap
        gap = await read_item(call)
        assert gap.HasField("gap") and gap.gap.oldest_event_id == retained[0]
        batches, kinds = await read_batches(call, len(retained))
        assert set(kinds) == {"events"}
        assert [e.event_id for b in batches for e in b] == retained
        assert (await read_item(call)).replay_complete.replayed == len(retained)
        call.cancel()


async def test_live_events_already_waiting_are_batched_and_none_is_waited_for(
    make_context: ContextFactory,
) -> None:
    bus = MemoryEventBus(max_batch=4)
    ctx = make_context()
    subscription = bus.subscribe(ctx.user_id, max_batch=100)
    complete = await anext(subscription)
    assert isinstance(complete, ReplayComplete)
    ids = (await bus.publish(ctx.user_id, [event(ctx, seq=s) for s in range(1, 7)])).event_ids
    first, second = await anext(subscription), await anext(subscription)
    assert isinstance(first, Events) and isinstance(second, Events)
    assert [e.event_id for e in first.parse() + second.parse()] == list(ids)
    assert (len(first.wire), len(second.wire)) == (4, 2)  # capped by the bus, then what was waiting
    assert str(second.last) == ids[-1]
    pending = asyncio.ensure_future(anext(subscription))
    await asyncio.sleep(0)
    [single] = (await bus.publish(ctx.user_id, [event(ctx, seq=7)])).event_ids
    async with asyncio.timeout(READ_TIMEOUT_S):
        lone = await pending
    assert isinstance(lone, Events) and [e.event_id for e in lone.parse()] == [single]
    await subscription.aclose()
