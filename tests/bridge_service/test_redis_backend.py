"""Redis-only behaviour: replicas sharing one Redis, trimming by age, key layout, lost data and connections."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from bridge_service.app import open_bus, redis_client_name
from bridge_service.bus import Events, RunEvent
from bridge_service.redis_bus import RedisEventBus
from bridge_service.settings import BridgeSettings
from runwire.common.v1 import context_pb2
from runwire_common.ids import new_id
from tests.bridge_service.harness import (
    ContextFactory,
    SettingsFactory,
    event,
    ids_of,
    open_bridge,
    read_events,
    read_item,
    read_until_replay_complete,
)

pytestmark = pytest.mark.parametrize("backend", ["redis"])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def delete_user_keys(redis: aioredis.Redis, settings: BridgeSettings, user_id: str) -> None:
    """What a Redis restart without persistence does to one user's log."""
    keys = [key async for key in redis.scan_iter(match=f"{settings.redis_key_prefix}:{{{user_id}}}:*")]
    assert keys
    await redis.delete(*keys)


async def test_a_publish_on_one_replica_reaches_a_subscriber_on_another_in_order(
    make_settings: SettingsFactory, make_context: ContextFactory
) -> None:
    settings = make_settings()
    async with open_bridge(settings) as first, open_bridge(settings) as second:
        ctx = make_context()
        early = await first.publish(ctx, *(event(ctx, seq=s) for s in range(1, 4)))
        call = second.subscribe(ctx, after=early[0])
        replayed, count = await read_until_replay_complete(call)
        assert [item.event.event_id for item in replayed] == early[1:] and count == 2
        published: list[str] = []
        for start in range(4, 64, 6):
            bridge = first if start % 4 else second
            published += await bridge.publish(ctx, *(event(ctx, seq=s) for s in range(start, start + 6)))
        assert ids_of(await read_events(call, len(published))) == published
        # Fencing holds across replicas too: one terminal event wins.
        responses = await asyncio.gather(
            *(
                (first if i % 2 else second).publish_response(ctx, event(ctx, seq=0, type="agent_death"))
                for i in range(20)
            )
        )
        assert sum(1 for r in responses if r.event_ids[0]) == 1
        [terminal] = await read_events(call, 1)
        assert (terminal.seq, terminal.type) == (64, "agent_death")
        call.cancel()


async def test_events_older_than_the_retention_are_trimmed_and_reported_as_a_gap(
    make_settings: SettingsFactory, make_context: ContextFactory
) -> None:
    async with open_bridge(make_settings(retention_s=0.5)) as bridge:
        ctx = make_context()
        old = await bridge.publish(ctx, *(event(ctx, seq=s) for s in range(1, 6)))
        await asyncio.sleep(0.7)
        [new] = await bridge.publish(ctx, event(ctx, seq=6))
        assert await bridge.retained(ctx.user_id) == [new]
        call = bridge.subscribe(ctx, after=old[1])
        before, replayed = await read_until_replay_complete(call)
        assert [(i.gap.requested_after, i.gap.oldest_event_id) for i in before[:1]] == [(old[1], new)]
        assert [i.event.event_id for i in before[1:]] == [new] and replayed == 1
        call.cancel()


async def test_keys_carry_the_user_as_a_hash_tag_and_expire(
    make_settings: SettingsFactory, make_context: ContextFactory, redis: aioredis.Redis
) -> None:
    settings = make_settings(retention_s=3600)
    async with open_bridge(settings) as bridge:
        ctx = make_context()
        await bridge.publish(ctx, event(ctx, seq=1, type="agent_completed"))
        keys = sorted([_text(k) async for k in redis.scan_iter(match=f"{settings.redis_key_prefix}:*")])
        tag = f"{settings.redis_key_prefix}:{{{ctx.user_id}}}"
        assert keys == [f"{tag}:events", f"{tag}:meta", f"{tag}:run_order", f"{tag}:runs"]
        assert len({key_slot(k.encode()) for k in keys}) == 1
        assert key_slot(ctx.user_id.encode()) == key_slot(keys[0].encode())
        for key in keys:
            assert 0 < await redis.pttl(key) <= 3_600_000
        call = bridge.subscribe(ctx)
        await read_until_replay_complete(call)
        channels = [_text(ch) for ch in await redis.pubsub_channels(f"{tag}:*")]
        assert channels == [f"{tag}:live"]
        call.cancel()


async def test_run_state_is_bounded_and_finished_runs_are_forgotten_first(
    make_settings: SettingsFactory, make_context: ContextFactory, redis: aioredis.Redis
) -> None:
    settings = make_settings(run_state_capacity=3, run_state_hold_s=0)  # no retry window to wait for
    async with open_bridge(settings) as bridge:
        ctx = make_context()
        runs = [f"run_bound{i}_0123456789abcdef" for i in range(5)]
        await bridge.publish(ctx, event(ctx, run_id=runs[0], seq=1, type="agent_completed"))
        await bridge.publish(ctx, event(ctx, run_id=runs[1], seq=1))  # live, older than the next
        await bridge.publish(ctx, event(ctx, run_id=runs[2], seq=1, type="agent_completed"))
        await bridge.publish(ctx, event(ctx, run_id=runs[3], seq=1))
        runs_key = bridge.bus.keys(ctx.user_id).runs if isinstance(bridge.bus, RedisEventBus) else ""
        kept = sorted(_text(k) for k in await redis.hkeys(runs_key))
        assert kept == sorted([runs[1], runs[2], runs[3]])  # the oldest finished run went first
        await bridge.publish(ctx, event(ctx, run_id=runs[4], seq=1))
        kept = sorted(_text(k) for k in await redis.hkeys(runs_key))
        assert kept == sorted([runs[1], runs[3], runs[4]])  # then the only other finished one


async def test_a_log_lost_in_redis_is_reported_as_a_gap_on_resume(
    make_settings: SettingsFactory, make_context: ContextFactory, redis: aioredis.Redis
) -> None:
    settings = make_settings()
    async with open_bridge(settings) as bridge:
        ctx = make_context()
        old = await bridge.publish(ctx, *(event(ctx, seq=s) for s in range(1, 4)))
        await delete_user_keys(redis, settings, ctx.user_id)

        call = bridge.subscribe(ctx, after=old[-1])  # nothing published since the loss
        before, replayed = await read_until_replay_complete(call)
        assert [(i.gap.requested_after, i.gap.oldest_event_id) for i in before] == [(old[-1], "")]
        assert replayed == 0
        [new] = await bridge.publish(ctx, event(ctx, seq=4))
        assert ids_of(await read_events(call, 1)) == [new]
        call.cancel()

        await delete_user_keys(redis, settings, ctx.user_id)
        after_loss = await bridge.publish(ctx, event(ctx, seq=5), event(ctx, seq=6))
        call = bridge.subscribe(ctx, after=new)  # published since the loss
        before, replayed = await read_until_replay_complete(call)
        assert (before[0].gap.requested_after, before[0].gap.oldest_event_id) == (new, after_loss[0])
        assert [i.event.event_id for i in before[1:]] == after_loss and replayed == 2
        call.cancel()


def _notice(ctx: context_pb2.UserContext, run_id: str, stamp_ms: int) -> RunEvent:
    """A terminal event whose seq is left to the bridge (an end or death notice), stamped ``stamp_ms``."""
    notice = event(ctx, run_id=run_id, seq=0, type="agent_completed")
    notice.timestamp.FromMilliseconds(stamp_ms)
    return notice


async def test_a_notice_for_a_run_that_ended_before_the_log_was_lost_is_not_stored_again(
    make_settings: SettingsFactory, make_context: ContextFactory, redis: aioredis.Redis
) -> None:
    settings = make_settings()
    async with open_bridge(settings) as bridge:
        ctx = make_context()
        ended, running = new_id("run"), new_id("run")
        await bridge.publish(
            ctx,
            event(ctx, run_id=ended, seq=1),
            event(ctx, run_id=ended, seq=2, type="agent_completed"),
            event(ctx, run_id=running, seq=1),
        )
        ended_at = int(time.time() * 1000)
        await asyncio.sleep(0.01)
        await delete_user_keys(redis, settings, ctx.user_id)  # Redis restarted without persistence
        assert all(await bridge.publish(ctx, event(ctx, run_id=running, seq=2)))

        # The registry's copy of the ended run's terminal event: it may have gone with the log.
        assert await bridge.publish(ctx, _notice(ctx, ended, ended_at)) == [""]
        # A run ending after the loss is announced as ever, once.
        now = int(time.time() * 1000) + 1
        assert all(await bridge.publish(ctx, _notice(ctx, running, now)))
        assert await bridge.publish(ctx, _notice(ctx, running, now)) == [""]

        # A user with no log at all (none lost): an old notice is the first event, stored.
        newcomer = make_context()
        assert all(await bridge.publish(newcomer, _notice(newcomer, new_id("run"), ended_at)))


async def test_a_subscription_whose_log_is_lost_while_following_ends_unavailable(
    make_settings: SettingsFactory, make_context: ContextFactory, redis: aioredis.Redis
) -> None:
    settings = make_settings()
    async with open_bridge(settings) as bridge:
        ctx = make_context()
        call = bridge.subscribe(ctx)
        await read_until_replay_complete(call)
        [seen] = await bridge.publish(ctx, event(ctx, seq=1))
        await read_events(call, 1)
        await delete_user_keys(redis, settings, ctx.user_id)
        [lost_after] = await bridge.publish(ctx, event(ctx, seq=2))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await read_item(call)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert caught.value.details() == f"the event log was reset; resume after {seen}"
        resumed = bridge.subscribe(ctx, after=seen)
        before, _ = await read_until_replay_complete(resumed)
        assert before[0].HasField("gap") and [i.event.event_id for i in before[1:]] == [lost_after]
        resumed.cancel()


async def test_a_killed_subscriber_connection_ends_unavailable_and_resuming_loses_nothing(
    make_settings: SettingsFactory, make_context: ContextFactory, redis: aioredis.Redis
) -> None:
    settings = make_settings()
    async with open_bridge(settings) as bridge:
        ctx = make_context()
        call = bridge.subscribe(ctx)
        await read_until_replay_complete(call)
        first = await bridge.publish(ctx, event(ctx, seq=1), event(ctx, seq=2))
        seen = ids_of(await read_events(call, 2))
        assert seen == first
        name = redis_client_name(settings)
        clients = [c for c in await redis.client_list(_type="pubsub") if c.get("name") == name]
        assert len(clients) == 1
        await redis.client_kill_filter(_id=clients[0]["id"])
        missed = await bridge.publish(ctx, event(ctx, seq=3), event(ctx, seq=4))

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            while True:
                seen.append((await read_item(call)).event.event_id)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        cursor = (caught.value.details() or "").rsplit(" ", 1)[-1]
        assert cursor == seen[-1]
        await bridge.wait_for_subscribers(ctx.user_id, 0)

        resumed = bridge.subscribe(ctx, after=cursor)
        rest, _ = await read_until_replay_complete(resumed)
        assert seen + [i.event.event_id for i in rest] == first + missed
        resumed.cancel()


async def test_an_unreachable_redis_is_unavailable_for_publish_and_subscribe(
    make_settings: SettingsFactory, make_context: ContextFactory
) -> None:
    async with open_bridge(make_settings(redis_url="redis://127.0.0.1:1/0", call_timeout_s=1)) as bridge:
        ctx = make_context()
        with pytest.raises(grpc.aio.AioRpcError) as publish_error:
            await bridge.publish(ctx, event(ctx))
        assert publish_error.value.code() == grpc.StatusCode.UNAVAILABLE
        call = bridge.subscribe(ctx, after="1-0")
        with pytest.raises(grpc.aio.AioRpcError) as subscribe_error:
            await read_item(call)
        assert subscribe_error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert subscribe_error.value.details() == "event store is unavailable; resume after 1-0"
        assert bridge.bus.subscriber_count(ctx.user_id) == 0


async def test_stored_events_carry_their_seq_and_id(make_settings: SettingsFactory) -> None:
    user = new_id("user")
    async with open_bus(make_settings()) as bus:
        assert isinstance(bus, RedisEventBus)
        result = await bus.publish(
            user,
            [
                RunEvent(
                    user_id=user,
                    run_id="run_x0123456789abcdefgh",
                    seq=0,
                    type="agent_started",
                    payload_json="{}",
                    event_id="9-9",
                )
            ],
        )
        subscription = bus.subscribe(user, after="1-0")
        _gap, item, _complete = [await anext(subscription) for _ in range(3)]
        assert isinstance(item, Events)
        [stored] = item.parse()
        assert (stored.event_id, stored.seq) == (result.event_ids[0], 1)
        await subscription.aclose()
