"""Publish over a real server: ids in order, and a bad batch stores nothing."""

from __future__ import annotations

import json
from collections.abc import Callable

import grpc
import pytest

from runwire.common.v1 import context_pb2, event_pb2
from tests.bridge_service.harness import (
    Bridge,
    ContextFactory,
    SettingsFactory,
    event,
    open_bridge,
    strictly_increasing,
)


async def test_publish_returns_one_increasing_event_id_per_event_in_order(
    bridge: Bridge, make_context: ContextFactory
) -> None:
    ctx = make_context()
    first = await bridge.publish(ctx, *(event(ctx, seq=i) for i in range(1, 51)))
    second = await bridge.publish(ctx, event(ctx, seq=51))
    assert len(first) == 50
    assert len(second) == 1
    assert strictly_increasing(first + second)
    assert await bridge.retained(ctx.user_id) == first + second


async def test_event_owned_by_another_user_is_refused_and_nothing_is_stored(
    bridge: Bridge, make_context: ContextFactory
) -> None:
    alice, bob = make_context(), make_context()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await bridge.publish(alice, event(alice, seq=1), event(bob, seq=2))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "events[1].user_id" in (caught.value.details() or "")
    assert await bridge.retained(alice.user_id) == []
    assert await bridge.retained(bob.user_id) == []


def _with(**changes: object) -> Callable[[event_pb2.RunEvent], None]:
    def change(e: event_pb2.RunEvent) -> None:
        for name, value in changes.items():
            setattr(e, name, value)

    return change


INVALID_EVENTS = {
    "unknown type": (_with(type="agent_exploded"), "events[0].type"),
    "blank type": (_with(type=""), "events[0].type"),
    "missing run id": (_with(run_id=""), "events[0].run_id"),
    "placeholder run id": (_with(run_id="null"), "events[0].run_id"),
    "negative seq": (_with(seq=-4), "events[0].seq"),
    "seq beyond 2**53": (_with(seq=2**53 + 1), "events[0].seq"),
    "payload not json": (_with(payload_json="{not json"), "events[0].payload_json"),
    "payload empty": (_with(payload_json=""), "events[0].payload_json"),
    "payload an array": (_with(payload_json="[1, 2]"), "events[0].payload_json"),
    "payload a string": (_with(payload_json='"text"'), "events[0].payload_json"),
    "payload deeply nested": (_with(payload_json="[" * 5000 + "]" * 5000), "events[0].payload_json"),
    "payload too large": (_with(payload_json=json.dumps({"x": "a" * 70_000})), "bytes"),
}


@pytest.mark.parametrize("case", list(INVALID_EVENTS), ids=list(INVALID_EVENTS))
async def test_invalid_event_is_an_invalid_argument_naming_the_field(
    bridge: Bridge, make_context: ContextFactory, case: str
) -> None:
    change, expected = INVALID_EVENTS[case]
    ctx = make_context()
    bad = event(ctx)
    change(bad)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await bridge.publish(ctx, bad, event(ctx, seq=2))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in (caught.value.details() or "")
    assert await bridge.retained(ctx.user_id) == []


async def test_a_bad_event_late_in_a_batch_rejects_the_whole_batch(
    bridge: Bridge, make_context: ContextFactory
) -> None:
    ctx = make_context()
    good = [event(ctx, seq=i) for i in range(1, 5)]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await bridge.publish(ctx, *good, event(ctx, seq=5, type="nope"))
    assert "events[4].type" in (caught.value.details() or "")
    assert await bridge.retained(ctx.user_id) == []


async def test_payload_at_the_size_limit_is_accepted(
    make_settings: SettingsFactory, make_context: ContextFactory
) -> None:
    async with open_bridge(make_settings(max_payload_bytes=100)) as bridge:
        ctx = make_context()
        at_limit = json.dumps({"k": "é" * 45 + "a"}, ensure_ascii=False)  # bytes, not characters
        assert (len(at_limit), len(at_limit.encode())) == (55, 100)
        assert len(await bridge.publish(ctx, event(ctx, payload_json=at_limit))) == 1
        over_limit = json.dumps({"k": "é" * 45 + "ab"}, ensure_ascii=False)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await bridge.publish(ctx, event(ctx, payload_json=over_limit))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_empty_and_oversized_batches_are_refused(
    make_settings: SettingsFactory, make_context: ContextFactory
) -> None:
    async with open_bridge(make_settings(max_events_per_publish=3)) as bridge:
        ctx = make_context()
        for events in ([], [event(ctx, seq=i) for i in range(1, 5)]):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await bridge.publish(ctx, *events)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert await bridge.retained(ctx.user_id) == []
        assert len(await bridge.publish(ctx, *(event(ctx, seq=i) for i in range(1, 4)))) == 3


async def test_run_scoped_context_only_publishes_events_of_its_run(
    bridge: Bridge, make_context: ContextFactory
) -> None:
    ctx = make_context(run_id="run_aaaaaaaaaaaaaaaaaaaaaaaa")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await bridge.publish(ctx, event(ctx, run_id="run_bbbbbbbbbbbbbbbbbbbbbbbb"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(await bridge.publish(ctx, event(ctx, run_id="run_aaaaaaaaaaaaaaaaaaaaaaaa"))) == 1


async def test_event_id_sent_by_the_publisher_is_replaced_by_the_bridges(
    bridge: Bridge, make_context: ContextFactory
) -> None:
    ctx = make_context()
    forged = event(ctx)
    forged.event_id = "99999999999999-0"
    [assigned] = await bridge.publish(ctx, forged)
    assert assigned != "99999999999999-0"
    assert await bridge.retained(ctx.user_id) == [assigned]


def _unattested(make_context: ContextFactory) -> context_pb2.UserContext:
    return context_pb2.UserContext(user_id="user_0123456789abcdefghij", request_id="req_0123456789abcdefghij")


def _forged(make_context: ContextFactory) -> context_pb2.UserContext:
    ctx = make_context()
    ctx.user_id = "user_someone_else_entirely"
    return ctx


def _expired(make_context: ContextFactory) -> context_pb2.UserContext:
    return make_context(ttl_s=-60)


def _no_user(make_context: ContextFactory) -> context_pb2.UserContext:
    ctx = make_context()
    ctx.user_id = ""
    return ctx


def _placeholder_user(make_context: ContextFactory) -> context_pb2.UserContext:
    return make_context("undefined")


BAD_CONTEXTS = {
    "unattested": (_unattested, grpc.StatusCode.UNAUTHENTICATED),
    "forged identity": (_forged, grpc.StatusCode.UNAUTHENTICATED),
    "expired": (_expired, grpc.StatusCode.UNAUTHENTICATED),
    "missing user id": (_no_user, grpc.StatusCode.INVALID_ARGUMENT),
    "placeholder user id": (_placeholder_user, grpc.StatusCode.INVALID_ARGUMENT),
}


@pytest.mark.parametrize("case", list(BAD_CONTEXTS), ids=list(BAD_CONTEXTS))
async def test_publish_with_a_bad_context_is_refused_and_stores_nothing(
    bridge: Bridge, make_context: ContextFactory, case: str
) -> None:
    build, code = BAD_CONTEXTS[case]
    ctx = build(make_context)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await bridge.publish(ctx, event(ctx))
    assert caught.value.code() == code
    assert await bridge.retained(ctx.user_id) == []


@pytest.mark.parametrize("case", list(BAD_CONTEXTS), ids=list(BAD_CONTEXTS))
async def test_subscribe_with_a_bad_context_is_refused_before_registering(
    bridge: Bridge, make_context: ContextFactory, case: str
) -> None:
    build, code = BAD_CONTEXTS[case]
    ctx = build(make_context)
    call = bridge.subscribe(ctx)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == code
    assert bridge.bus.subscriber_count(ctx.user_id) == 0
