"""Cursors the log can no longer honour are reported as a gap, never skipped silently."""

from __future__ import annotations

import grpc
import pytest

from bridge_service.event_ids import parse_event_id
from tests.bridge_service.harness import (
    Bridge,
    ContextFactory,
    SettingsFactory,
    event,
    open_bridge,
    read_events,
    read_until_replay_complete,
    settings_for,
)


async def test_memory_cursor_older_than_the_retained_log_gets_a_gap_then_the_retained_events(
    attestation_key_spec: str, make_context: ContextFactory
) -> None:
    async with open_bridge(settings_for(attestation_key_spec, log_capacity=5)) as bridge:
        ctx = make_context()
        published = await bridge.publish(ctx, *(event(ctx, seq=i) for i in range(1, 11)))

        call = bridge.subscribe(ctx, after=published[2])
        before, replayed = await read_until_replay_complete(call)
        gap, *events = before
        assert gap.HasField("gap")
        assert gap.gap.requested_after == published[2]
        assert gap.gap.oldest_event_id == published[5]
        assert [item.event.event_id for item in events] == published[5:]
        assert replayed == 5

        [live] = await bridge.publish(ctx, event(ctx, seq=11))
        assert [e.event_id for e in await read_events(call, 1)] == [live]
        call.cancel()


async def test_cursor_at_the_newest_trimmed_event_needs_no_gap(
    make_settings: SettingsFactory, make_context: ContextFactory
) -> None:
    async with open_bridge(make_settings(log_capacity=5)) as bridge:
        ctx = make_context()
        published = await bridge.publish(ctx, *(event(ctx, seq=i) for i in range(1, 11)))

        call = bridge.subscribe(ctx, after=published[4])
        before, replayed = await read_until_replay_complete(call)
        assert [item.event.event_id for item in before] == published[5:]
        assert replayed == 5
        call.cancel()


async def test_cursor_from_before_this_bridge_started_gets_a_gap(
    bridge: Bridge, make_context: ContextFactory
) -> None:
    ctx = make_context()
    published = await bridge.publish(ctx, event(ctx, seq=1), event(ctx, seq=2))

    call = bridge.subscribe(ctx, after="1-0")
    before, replayed = await read_until_replay_complete(call)
    gap, *events = before
    assert (gap.gap.requested_after, gap.gap.oldest_event_id) == ("1-0", published[0])
    assert [item.event.event_id for item in events] == published
    assert replayed == 2
    call.cancel()


async def test_gap_on_an_empty_log_has_no_oldest_event(bridge: Bridge, make_context: ContextFactory) -> None:
    ctx = make_context()
    call = bridge.subscribe(ctx, after="1-0")
    before, replayed = await read_until_replay_complete(call)
    assert [(item.gap.requested_after, item.gap.oldest_event_id) for item in before] == [("1-0", "")]
    assert replayed == 0
    call.cancel()


async def test_cursor_newer_than_anything_assigned_gets_a_gap_and_the_whole_log(
    make_settings: SettingsFactory, make_context: ContextFactory
) -> None:
    async with open_bridge(make_settings()) as bridge:
        ctx = make_context()
        published = await bridge.publish(ctx, *(event(ctx, seq=i) for i in range(1, 4)))
        newest = parse_event_id(published[-1])
        future = f"{newest.ms + 60_000}-0"

        call = bridge.subscribe(ctx, after=future)
        before, replayed = await read_until_replay_complete(call)
        gap, *events = before
        assert (gap.gap.requested_after, gap.gap.oldest_event_id) == (future, published[0])
        assert [item.event.event_id for item in events] == published
        assert replayed == 3
        call.cancel()


async def test_another_users_newer_cursor_does_not_hide_this_users_events(
    make_settings: SettingsFactory, make_context: ContextFactory
) -> None:
    async with open_bridge(make_settings()) as bridge:
        alice, bob = make_context(), make_context()
        [alice_event] = await bridge.publish(alice, event(alice))
        bob_ids = await bridge.publish(bob, *(event(bob, seq=i) for i in range(1, 4)))

        call = bridge.subscribe(alice, after=bob_ids[-1])
        before, _ = await read_until_replay_complete(call)
        gap, *events = before
        assert gap.HasField("gap")
        assert [item.event.event_id for item in events] == [alice_event]
        assert all(item.event.user_id == alice.user_id for item in events)
        call.cancel()


@pytest.mark.parametrize("after", ["abc", "12", "1-2-3", " 1-0", "1-0 ", "-1-0", "01-0", "1.5-0", "1-x"])
async def test_malformed_cursor_is_an_invalid_argument(
    bridge: Bridge, make_context: ContextFactory, after: str
) -> None:
    ctx = make_context()
    call = bridge.subscribe(ctx, after=after)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await read_until_replay_complete(call)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "after" in (caught.value.details() or "")
    assert bridge.bus.subscriber_count(ctx.user_id) == 0


async def test_cursor_older_than_the_trimmed_log_gets_a_gap_then_exactly_the_retained_events(
    make_settings: SettingsFactory, make_context: ContextFactory
) -> None:
    # Redis trims approximately (whole stream nodes), so assert on what is retained.
    async with open_bridge(make_settings(log_capacity=20)) as bridge:
        ctx = make_context()
        published: list[str] = []
        for start in range(1, 301, 50):
            published += await bridge.publish(ctx, *(event(ctx, seq=s) for s in range(start, start + 50)))
        retained = await bridge.retained(ctx.user_id)
        assert 20 <= len(retained) < 300
        assert retained == published[-len(retained) :]

        call = bridge.subscribe(ctx, after=published[0])
        before, replayed = await read_until_replay_complete(call)
        gap, *events = before
        assert (gap.gap.requested_after, gap.gap.oldest_event_id) == (published[0], retained[0])
        assert [item.event.event_id for item in events] == retained
        assert replayed == len(retained)

        [live] = await bridge.publish(ctx, event(ctx, seq=301))
        assert [e.event_id for e in await read_events(call, 1)] == [live]
        call.cancel()
