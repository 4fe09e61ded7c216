"""Fabric over a real server: many users on one stream, replay and resume, credit, add/remove, drain."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator

import grpc
import pytest

from bridge_service.fabric import FabricOptions
from runwire.bridge.v1 import bridge_pb2
from runwire.common.v1 import context_pb2
from runwire_common.attestation import ContextAttestor, generate_key_spec
from tests.bridge_service.harness import ContextFactory, SettingsFactory, event, strictly_increasing
from tests.bridge_service.stream_harness import FabricClient, StreamBridge, code_of, open_stream_bridge

GAUGE = "runwire_bridge_fabric_subscriptions"


@pytest.fixture
async def fbridge(make_settings: SettingsFactory) -> AsyncIterator[StreamBridge]:
    async with open_stream_bridge(make_settings()) as running:
        yield running


@pytest.fixture
async def fabric(fbridge: StreamBridge) -> AsyncIterator[FabricClient]:
    client = FabricClient(fbridge.stub)
    yield client
    await client.close()


async def publish(bridge: StreamBridge, ctx: context_pb2.UserContext, *seqs: int) -> list[str]:
    response = await bridge.stub.Publish(
        bridge_pb2.PublishRequest(
            user_context=ctx, events=[event(ctx, seq=seq, payload={"owner": ctx.user_id}) for seq in seqs]
        ),
        timeout=5,
    )
    return list(response.event_ids)


async def test_many_users_on_one_stream_each_receive_exactly_their_own_events_in_order(
    fbridge: StreamBridge, fabric: FabricClient, make_context: ContextFactory
) -> None:
    users = [make_context() for _ in range(40)]
    for sid, ctx in enumerate(users, start=1):
        await fabric.add(ctx, sid)
    for sid in range(1, len(users) + 1):
        await fabric.wait_for_replay(sid)

    published: list[list[str]] = []
    for seq in range(1, 6):  # every user's next event at once, round after round
        published += await asyncio.gather(*(publish(fbridge, ctx, seq) for ctx in users))
    for sid, ctx in enumerate(users, start=1):
        received = await fabric.wait_for_events(sid, 5)
        assert {e.user_id for e in received} == {ctx.user_id}
        assert [e.seq for e in received] == [1, 2, 3, 4, 5]
        assert strictly_increasing([e.event_id for e in received])
    await fabric.wait_until(lambda: sum(len(fabric.events(s)) for s in fabric.items) >= 5 * len(users))
    all_ids = [e.event_id for s in list(fabric.items) for e in fabric.events(s)]
    assert sorted(all_ids) == sorted(i for ids in published for i in ids)  # none missing, none duplicated
    assert fbridge.metric(GAUGE) == len(users)


async def test_an_add_replays_after_its_cursor_then_follows_live_events(
    fbridge: StreamBridge, fabric: FabricClient, make_context: ContextFactory
) -> None:
    ctx = make_context()
    published = await publish(fbridge, ctx, 1, 2, 3, 4, 5)
    await fabric.add(ctx, 9, after=published[1])
    done = await fabric.wait_for_replay(9)
    assert (done.replayed, done.resume_after) == (3, published[4])
    assert [e.event_id for e in fabric.events(9)] == published[2:]

    live = await publish(fbridge, ctx, 6)
    assert [e.event_id for e in await fabric.wait_for_events(9, 4)][3:] == live
    assert fabric.kinds(9)[-2:] == ["replay_complete", "events"]


async def test_a_live_only_add_resumes_from_its_replay_complete_cursor_without_loss(
    fbridge: StreamBridge, fabric: FabricClient, make_context: ContextFactory
) -> None:
    ctx = make_context()
    await publish(fbridge, ctx, 1)
    await fabric.add(ctx, 1)
    resume = (await fabric.wait_for_replay(1)).resume_after
    await fabric.remove(ctx, 1)
    missed = await publish(fbridge, ctx, 2, 3)

    await fabric.add(ctx, 2, after=resume)
    await fabric.wait_for_replay(2)
    assert [e.event_id for e in fabric.events(2)] == missed


async def test_a_cursor_the_log_no_longer_holds_gets_a_gap_item(
    fbridge: StreamBridge, fabric: FabricClient, make_context: ContextFactory
) -> None:
    ctx = make_context()
    published = await publish(fbridge, ctx, 1, 2)
    await fabric.add(ctx, 4, after="1-0")  # long before this bridge's log began
    await fabric.wait_for_replay(4)
    gap = fabric.items[4][0]
    assert gap.HasField("gap") and gap.gap.requested_after == "1-0"
    assert [e.event_id for e in fabric.events(4)] == published


async def test_a_malformed_cursor_ends_that_subscription_invalid_argument_and_the_stream_goes_on(
    fbridge: StreamBridge, fabric: FabricClient, make_context: ContextFactory
) -> None:
    ctx = make_context()
    await fabric.add(ctx, 1, after="not-a-cursor")
    ended = await fabric.wait_for_end(1)
    assert ended.code == code_of(grpc.StatusCode.INVALID_ARGUMENT) and "after" in ended.message

    await fabric.add(ctx, 2)
    await fabric.wait_for_replay(2)
    assert fbridge.metric(GAUGE) == 1


async def test_a_subscription_without_credit_does_not_delay_another_and_ends_resumably(
    make_settings: SettingsFactory, make_context: ContextFactory
) -> None:
    settings = make_settings(subscriber_queue=5, max_events_per_publish=5)
    async with open_stream_bridge(settings) as bridge:
        fabric = FabricClient(bridge.stub)
        slow, fast = make_context(), make_context()
        await fabric.add(slow, 1, initial_credit=2)
        await fabric.add(fast, 2)
        await fabric.wait_for_replay(1)
        await fabric.wait_for_replay(2)

        sent: list[str] = []
        for seq in range(1, 31):  # far more than the slow subscriber's credit and queue
            sent += await publish(bridge, slow, seq)
            await publish(bridge, fast, seq)
        # Every event of the other subscription arrives while the slow one holds no credit.
        assert [e.seq for e in await fabric.wait_for_events(2, 30)] == list(range(1, 31))
        received = fabric.events(1)
        assert [e.event_id for e in received] == sent[:2]
        assert fabric.ended(1) is None

        await fabric.credit(1, 100)  # the subscription pulls again and learns that it fell behind
        ended = await fabric.wait_for_end(1)
        assert ended.code == code_of(grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert ended.cursor == received[-1].event_id
        assert (
            bridge.metric("runwire_bridge_fabric_subscriptions_ended_total", code="resource_exhausted") == 1
        )

        await fabric.add(slow, 3, after=ended.cursor)
        await fabric.wait_for_replay(3)
        resumed = fabric.events(1) + fabric.events(3)
        assert [e.event_id for e in resumed] == sent  # nothing lost, nothing repeated
        await fabric.close()


async def test_a_subscription_is_sent_no_more_events_than_its_credit(
    fbridge: StreamBridge, fabric: FabricClient, make_context: ContextFactory
) -> None:
    ctx, other = make_context(), make_context()
    await fabric.add(ctx, 1, initial_credit=3, max_batch=2)
    await fabric.add(other, 2)
    await fabric.wait_for_replay(1)
    await fabric.wait_for_replay(2)
    sent = await publish(fbridge, ctx, *range(1, 11))

    await fabric.wait_for_events(1, 3)
    await publish(fbridge, other, 1)  # a round trip through the bridge after the credit ran out
    await fabric.wait_for_events(2, 1)
    assert [e.event_id for e in fabric.events(1)] == sent[:3]

    await fabric.credit(1, 4)
    await fabric.wait_for_events(1, 7)
    await publish(fbridge, other, 2)
    await fabric.wait_for_events(2, 2)
    assert [e.event_id for e in fabric.events(1)] == sent[:7]
    assert all(len(item.events.events) <= 2 for item in fabric.items[1] if item.HasField("events"))


@pytest.mark.parametrize("problem", ["unattested", "forged", "expired", "foreign_key"])
async def test_an_add_without_a_valid_attestation_ends_unauthenticated_and_nothing_of_that_user_flows(
    fbridge: StreamBridge, fabric: FabricClient, make_context: ContextFactory, problem: str
) -> None:
    victim = make_context()
    ctx = context_pb2.UserContext()
    ctx.CopyFrom(victim)
    if problem == "unattested":
        ctx.ClearField("attestation")
    elif problem == "forged":
        ctx.CopyFrom(make_context())
        ctx.user_id = victim.user_id  # another user's attestation, this user's id
    elif problem == "expired":
        ctx = make_context(victim.user_id, ttl_s=-3600)
    else:
        ctx = ContextAttestor.from_spec(generate_key_spec("test")).mint(victim)
    await fabric.add(ctx, 5)
    ended = await fabric.wait_for_end(5)
    assert ended.code == code_of(grpc.StatusCode.UNAUTHENTICATED)
    assert fbridge.bus.subscriber_count(victim.user_id) == 0

    await publish(fbridge, victim, 1)
    witness = make_context()
    await fabric.add(witness, 6)
    await fabric.wait_for_replay(6)
    await publish(fbridge, witness, 1)
    await fabric.wait_for_events(6, 1)
    assert fabric.kinds(5) == ["ended"]
    assert fbridge.metric("runwire_bridge_fabric_subscriptions_ended_total", code="unauthenticated") == 1


@pytest.mark.parametrize("user_id", ["test", "null", " ", "demo_1"])
async def test_an_add_with_a_placeholder_user_id_ends_invalid_argument(
    fabric: FabricClient, attestor: ContextAttestor, user_id: str
) -> None:
    ctx = attestor.mint(context_pb2.UserContext(user_id=user_id), ttl_s=600)
    await fabric.add(ctx, 1)
    ended = await fabric.wait_for_end(1)
    assert ended.code == code_of(grpc.StatusCode.INVALID_ARGUMENT) and "user_id" in ended.message


async def test_remove_unregisters_the_bus_subscription_and_the_metrics_show_it(
    fbridge: StreamBridge, fabric: FabricClient, make_context: ContextFactory
) -> None:
    ctx = make_context()
    await fabric.add(ctx, 1)
    await fabric.wait_for_replay(1)
    assert fbridge.bus.subscriber_count(ctx.user_id) == 1
    assert fbridge.metric(GAUGE) == 1

    await fabric.remove(ctx, 1)
    async with asyncio.timeout(5):
        while fbridge.bus.subscriber_count(ctx.user_id) or fbridge.metric(GAUGE):
            await asyncio.sleep(0.01)
    assert fbridge.metric("runwire_bridge_fabric_subscriptions_removed_total") == 1
    assert fbridge.metric("runwire_bridge_fabric_subscriptions_added_total") == 1
    assert fabric.ended(1) is None  # removed by the gateway: no ended item


async def test_a_removed_subscription_is_freed_by_reference_counting_without_the_cyclic_collector(
    fbridge: StreamBridge, fabric: FabricClient, make_context: ContextFactory
) -> None:
    # A cancelled pump's CancelledError held the subscription in a reference cycle: users
    # leaving in numbers left garbage whose collection paused the bridge for tens of ms.
    gc.collect()
    gc.disable()
    try:
        contexts = [make_context() for _ in range(5)]
        for sid, ctx in enumerate(contexts, start=1):
            await fabric.add(ctx, sid)
            await fabric.wait_for_replay(sid)
        assert len(subscriptions_alive()) == 5
        for sid, ctx in enumerate(contexts, start=1):
            await fabric.remove(ctx, sid)
        async with asyncio.timeout(5):
            while fbridge.metric(GAUGE):
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert subscriptions_alive() == []
    finally:
        gc.enable()


def subscriptions_alive() -> list[object]:
    return [obj for obj in gc.get_objects() if type(obj).__name__ == "_Subscription"]


async def test_a_remove_by_another_user_is_ignored_and_counted(
    fbridge: StreamBridge, fabric: FabricClient, make_context: ContextFactory
) -> None:
    owner, intruder = make_context(), make_context()
    await fabric.add(owner, 1)
    await fabric.wait_for_replay(1)
    await fabric.remove(intruder, 1)
    await fabric.remove(context_pb2.UserContext(), 1)

    sent = await publish(fbridge, owner, 1)
    assert [e.event_id for e in await fabric.wait_for_events(1, 1)] == sent
    assert fbridge.bus.subscriber_count(owner.user_id) == 1
    assert fbridge.metric("runwire_bridge_fabric_requests_ignored_total", reason="remove_not_owner") == 2
    assert fabric.ended(1) is None


async def test_a_duplicate_subscription_id_is_refused_and_the_live_subscription_goes_on(
    fbridge: StreamBridge, fabric: FabricClient, make_context: ContextFactory
) -> None:
    first, second = make_context(), make_context()
    await fabric.add(first, 1)
    await fabric.wait_for_replay(1)
    await fabric.add(second, 1)
    ended = await fabric.wait_for_end(1)
    assert ended.code == code_of(grpc.StatusCode.INVALID_ARGUMENT) and "already live" in ended.message
    assert fbridge.bus.subscriber_count(second.user_id) == 0

    sent = await publish(fbridge, first, 1)
    received = await fabric.wait_for_events(1, 1)
    assert [(e.event_id, e.user_id) for e in received] == [(sent[0], first.user_id)]


async def test_a_subscription_id_can_be_reused_after_remove_and_nothing_of_the_old_one_follows(
    fbridge: StreamBridge, fabric: FabricClient, make_context: ContextFactory
) -> None:
    alice, bob = make_context(), make_context()
    await fabric.add(alice, 1)
    await fabric.wait_for_replay(1)
    await publish(fbridge, alice, *range(1, 6))
    await fabric.remove(alice, 1)
    await fabric.add(bob, 1)
    await fabric.wait_until(
        lambda: fabric.kinds(1).count("replay_complete") == 2, "the second replay_complete"
    )
    sent = await publish(fbridge, bob, 1)
    await fabric.wait_until(lambda: sent[0] in {e.event_id for e in fabric.events(1)}, "bob's event")

    after_readd = fabric.items[1][
        [i for i, item in enumerate(fabric.items[1]) if item.HasField("replay_complete")][-1] :
    ]
    assert {e.user_id for item in after_readd if item.HasField("events") for e in item.events.events} == {
        bob.user_id
    }


async def test_credit_and_removes_for_unknown_subscriptions_are_ignored(
    fbridge: StreamBridge, fabric: FabricClient, make_context: ContextFactory
) -> None:
    ctx = make_context()
    await fabric.credit(77, 10)
    await fabric.credit(78, -5)
    await fabric.remove(ctx, 79)
    await fabric.add(ctx, 1)
    await fabric.wait_for_replay(1)
    assert set(fabric.items) == {1}


async def test_a_full_response_is_split_at_the_size_cap_and_events_keep_their_order(
    make_settings: SettingsFactory, make_context: ContextFactory
) -> None:
    async with open_stream_bridge(make_settings(), fabric=FabricOptions(max_response_bytes=2048)) as bridge:
        fabric = FabricClient(bridge.stub)
        ctx = make_context()
        await fabric.add(ctx, 1)
        await fabric.wait_for_replay(1)
        big = "x" * 500
        request = bridge_pb2.PublishRequest(
            user_context=ctx,
            events=[event(ctx, seq=seq, payload={"reasoning": big}) for seq in range(1, 21)],
        )
        sent = list((await bridge.stub.Publish(request, timeout=5)).event_ids)
        received = await fabric.wait_for_events(1, 20)
        assert [e.event_id for e in received] == sent
        sizes = [r.ByteSize() for r in fabric.responses]
        assert max(sizes) <= 2048 + 700  # the cap, or one event over it
        assert len(fabric.responses) >= 5
        await fabric.close()


async def test_draining_ends_every_subscription_unavailable_with_its_cursor_then_the_stream(
    fbridge: StreamBridge, fabric: FabricClient, make_context: ContextFactory
) -> None:
    users = [make_context() for _ in range(5)]
    for sid, ctx in enumerate(users, start=1):
        await fabric.add(ctx, sid)
        await fabric.wait_for_replay(sid)
    last = {sid: (await publish(fbridge, ctx, 1, 2))[-1] for sid, ctx in enumerate(users, start=1)}
    for sid in last:
        await fabric.wait_for_events(sid, 2)

    await fbridge.drain()
    await fabric.wait_until(lambda: fabric.finished, "the stream ended")
    for sid, cursor in last.items():
        ended = fabric.ended(sid)
        assert ended is not None and ended.code == code_of(grpc.StatusCode.UNAVAILABLE)
        assert ended.cursor == cursor
    assert fabric.error is not None and fabric.error.code() == grpc.StatusCode.UNAVAILABLE
    assert fbridge.metric(GAUGE) == 0


async def test_a_half_closed_stream_removes_its_subscriptions_and_ends_ok(
    fbridge: StreamBridge, fabric: FabricClient, make_context: ContextFactory
) -> None:
    ctx = make_context()
    await fabric.add(ctx, 1)
    await fabric.wait_for_replay(1)
    await fabric.call.done_writing()
    await fabric.wait_until(lambda: fabric.finished, "the stream ended")
    assert fabric.error is None and await fabric.call.code() == grpc.StatusCode.OK
    async with asyncio.timeout(5):
        while fbridge.bus.subscriber_count(ctx.user_id):
            await asyncio.sleep(0.01)
