"""Subscribe over a real server: replay, live, resume, several tabs, cancellation."""

from __future__ import annotations

import asyncio

from tests.bridge_service.harness import (
    Bridge,
    ContextFactory,
    event,
    ids_of,
    read_events,
    read_item,
    read_until_replay_complete,
)


async def test_subscriber_gets_the_events_after_its_cursor_then_live_ones(
    bridge: Bridge, make_context: ContextFactory
) -> None:
    ctx = make_context()
    published = await bridge.publish(ctx, *(event(ctx, seq=i) for i in range(1, 6)))

    call = bridge.subscribe(ctx, after=published[1])
    before, replayed = await read_until_replay_complete(call)
    assert [item.event.event_id for item in before] == published[2:]
    assert replayed == 3

    live = await bridge.publish(ctx, event(ctx, seq=6), event(ctx, seq=7))
    assert ids_of(await read_events(call, 2)) == live
    call.cancel()


async def test_empty_cursor_means_live_events_only_after_replay_complete_zero(
    bridge: Bridge, make_context: ContextFactory
) -> None:
    ctx = make_context()
    await bridge.publish(ctx, event(ctx, seq=1))

    call = bridge.subscribe(ctx)
    before, replayed = await read_until_replay_complete(call)
    assert (before, replayed) == ([], 0)

    live = await bridge.publish(ctx, event(ctx, seq=2))
    received = await read_events(call, 1)
    assert ids_of(received) == live
    assert received[0].seq == 2
    call.cancel()


async def test_events_keep_their_envelope_and_get_a_timestamp(
    bridge: Bridge, make_context: ContextFactory
) -> None:
    ctx = make_context()
    call = bridge.subscribe(ctx)
    await read_until_replay_complete(call)
    sent = event(ctx, seq=3, type="partial_result", payload={"content": "hé", "index": 0})
    [event_id] = await bridge.publish(ctx, sent)

    [received] = await read_events(call, 1)
    assert received.event_id == event_id
    assert (received.user_id, received.run_id, received.thread_id, received.agent) == (
        sent.user_id,
        sent.run_id,
        sent.thread_id,
        sent.agent,
    )
    assert (received.seq, received.type, received.payload_json) == (3, "partial_result", sent.payload_json)
    assert received.timestamp.seconds > 0
    call.cancel()


async def test_every_subscriber_of_one_user_gets_every_event_in_order(
    bridge: Bridge, make_context: ContextFactory
) -> None:
    ctx = make_context()
    calls = [bridge.subscribe(ctx) for _ in range(3)]
    for call in calls:
        await read_until_replay_complete(call)

    published: list[str] = []
    for batch in range(4):
        published += await bridge.publish(ctx, *(event(ctx, seq=batch * 5 + i) for i in range(1, 6)))

    for call in calls:
        assert ids_of(await read_events(call, 20)) == published
        call.cancel()


async def test_cancelled_subscription_is_unregistered_from_the_bus(
    bridge: Bridge, make_context: ContextFactory
) -> None:
    ctx = make_context()
    staying, leaving = bridge.subscribe(ctx), bridge.subscribe(ctx)
    await read_until_replay_complete(staying)
    await read_until_replay_complete(leaving)
    assert bridge.bus.subscriber_count(ctx.user_id) == 2

    leaving.cancel()
    await bridge.wait_for_subscribers(ctx.user_id, 1)

    [event_id] = await bridge.publish(ctx, event(ctx))
    assert ids_of(await read_events(staying, 1)) == [event_id]
    staying.cancel()
    await bridge.wait_for_subscribers(ctx.user_id, 0)


async def test_subscription_ended_by_the_client_deadline_is_unregistered(
    bridge: Bridge, make_context: ContextFactory
) -> None:
    ctx = make_context()
    call = bridge.subscribe(ctx, timeout=0.3)
    await read_until_replay_complete(call)
    assert bridge.bus.subscriber_count(ctx.user_id) == 1
    await asyncio.sleep(0.5)
    await bridge.wait_for_subscribers(ctx.user_id, 0)


async def test_resuming_from_the_last_seen_event_loses_and_repeats_nothing(
    bridge: Bridge, make_context: ContextFactory
) -> None:
    ctx = make_context()
    first = bridge.subscribe(ctx)
    await read_until_replay_complete(first)
    published = await bridge.publish(ctx, *(event(ctx, seq=i) for i in range(1, 4)))
    seen = ids_of(await read_events(first, 2))
    first.cancel()

    published += await bridge.publish(ctx, *(event(ctx, seq=i) for i in range(4, 6)))
    second = bridge.subscribe(ctx, after=seen[-1])
    replayed, count = await read_until_replay_complete(second)
    assert seen + [item.event.event_id for item in replayed] == published
    assert count == 3
    second.cancel()


async def test_replay_complete_follows_the_replay_even_when_nothing_is_newer(
    bridge: Bridge, make_context: ContextFactory
) -> None:
    ctx = make_context()
    [last] = await bridge.publish(ctx, event(ctx))
    call = bridge.subscribe(ctx, after=last)
    item = await read_item(call)
    assert item.HasField("replay_complete")
    assert item.replay_complete.replayed == 0
    call.cancel()
