"""Redis live fan-out: a fixed number of connections for any number of subscribers, exact delivery.

Bus-level, against the real Redis behind ``redis_url``: the subscriptions are
the bus's own async generators, so a thousand of them cost no gRPC streams.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from bridge_service.app import open_bus, redis_client_name
from bridge_service.bus import (
    BackendUnavailable,
    BusDraining,
    BusItem,
    Events,
    ReplayComplete,
    RunEvent,
    SubscriberOverflow,
)
from bridge_service.event_ids import EventId, parse_event_id
from bridge_service.redis_bus import RedisEventBus
from bridge_service.redis_scripts import user_keys
from bridge_service.settings import BridgeSettings
from runwire_common.ids import new_id
from runwire_common.redis_keys import hash_tag
from tests.bridge_service.harness import SettingsFactory

pytestmark = pytest.mark.parametrize("backend", ["redis"])

RUN = "run_0123456789abcdefghij"
TIMEOUT_S = 30.0
Subscription = AsyncGenerator[BusItem, None]


def ev(user_id: str, seq: int = 0, payload: str = "{}") -> RunEvent:
    return RunEvent(user_id=user_id, run_id=RUN, seq=seq, type="agent_thinking", payload_json=payload)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait (bounded) for a condition that settles asynchronously, e.g. an UNSUBSCRIBE being processed."""
    async with asyncio.timeout(TIMEOUT_S):
        while not await check():
            await asyncio.sleep(0.02)
    assert await check(), what


async def until_replay_complete(subscription: Subscription) -> ReplayComplete:
    async with asyncio.timeout(TIMEOUT_S):
        async for item in subscription:
            if isinstance(item, ReplayComplete):
                return item
    raise AssertionError("the subscription ended before ReplayComplete")


async def read_events(subscription: Subscription, count: int) -> list[RunEvent]:
    events: list[RunEvent] = []
    async with asyncio.timeout(TIMEOUT_S):
        while len(events) < count:
            item = await anext(subscription)
            assert isinstance(item, Events), item
            events += item.parse()
    return events


async def bridge_connections(redis: aioredis.Redis, settings: BridgeSettings, kind: str | None = None) -> int:
    name = redis_client_name(settings)
    clients = await (redis.client_list(_type=kind) if kind else redis.client_list())
    return sum(1 for client in clients if client.get("name") == name)


async def live_channels(
    redis: aioredis.Redis, settings: BridgeSettings, *, sharded: bool = False
) -> list[bytes]:
    pattern = f"{settings.redis_key_prefix}:*"
    if sharded:
        names = await redis.execute_command("PUBSUB", "SHARDCHANNELS", pattern)  # type: ignore[no-untyped-call]
    else:
        names = await redis.pubsub_channels(pattern)
    return [name if isinstance(name, bytes) else name.encode() for name in names]


async def test_a_thousand_subscribers_share_at_most_ten_connections_and_each_gets_exactly_its_events(
    make_settings: SettingsFactory, redis: aioredis.Redis
) -> None:
    settings = make_settings()
    users = [new_id("user") for _ in range(1_000)]
    async with open_bus(settings) as bus:
        assert isinstance(bus, RedisEventBus)
        subscriptions = [bus.subscribe(user, max_batch=8) for user in users]
        await asyncio.gather(*(until_replay_complete(s) for s in subscriptions))
        assert 1 <= await bridge_connections(redis, settings, "pubsub") <= settings.redis_pubsub_shards
        assert await bridge_connections(redis, settings) <= 10
        assert len(await live_channels(redis, settings)) == len(users)

        published: dict[str, list[str]] = {}
        for start in range(0, len(users), 100):  # publishers run concurrently, a hundred users at a time
            group = users[start : start + 100]
            results = await asyncio.gather(*(bus.publish(u, [ev(u), ev(u)]) for u in group))
            published.update({u: list(r.event_ids) for u, r in zip(group, results, strict=True)})
        assert await bridge_connections(redis, settings) <= 10

        received = await asyncio.gather(*(read_events(s, 2) for s in subscriptions))
        for user, events in zip(users, received, strict=True):
            assert {e.user_id for e in events} == {user}  # nothing foreign
            assert [e.event_id for e in events] == published[user]  # nothing missing, nothing twice
        # Nothing else is queued for anyone: the next event each one sees is the next one published.
        sentinels = await asyncio.gather(*(bus.publish(u, [ev(u)]) for u in users))
        following = await asyncio.gather(*(read_events(s, 1) for s in subscriptions))
        for user, sentinel, [event] in zip(users, sentinels, following, strict=True):
            assert (event.user_id, event.event_id) == (user, sentinel.event_ids[0])

        for subscription in subscriptions:
            await subscription.aclose()
        assert all(bus.subscriber_count(u) == 0 for u in users)

        async def unsubscribed() -> bool:
            return not await live_channels(redis, settings)

        await eventually(unsubscribed, "every channel is unsubscribed once its subscribers are gone")
        assert bus.live_channels() == []
        assert await bridge_connections(redis, settings) <= 10


async def test_a_channel_stays_subscribed_while_one_of_its_subscribers_remains(
    make_settings: SettingsFactory, redis: aioredis.Redis
) -> None:
    settings = make_settings()
    user = new_id("user")
    channel = user_keys(settings.redis_key_prefix, user).live
    async with open_bus(settings) as bus:
        first, second = bus.subscribe(user), bus.subscribe(user)
        await until_replay_complete(first)
        await until_replay_complete(second)
        assert await redis.pubsub_numsub(channel) == [(channel.encode(), 1)]  # one shared SUBSCRIBE
        await first.aclose()
        [event_id] = (await bus.publish(user, [ev(user)])).event_ids
        assert [e.event_id for e in await read_events(second, 1)] == [event_id]
        await second.aclose()

        async def unsubscribed() -> bool:
            return await redis.pubsub_numsub(channel) == [(channel.encode(), 0)]

        await eventually(unsubscribed, "the last subscriber leaving unsubscribes the channel")


async def test_subscribing_and_leaving_one_channel_concurrently_never_misses_a_live_event(
    make_settings: SettingsFactory, redis: aioredis.Redis
) -> None:
    """SUBSCRIBE/UNSUBSCRIBE of one channel interleave; each subscription sees every event after its start."""
    settings = make_settings(redis_pubsub_shards=1)
    user = new_id("user")
    channel = user_keys(settings.redis_key_prefix, user).live

    async def churn(bus: RedisEventBus, rounds: int) -> None:
        for _ in range(rounds):
            subscription = bus.subscribe(user, max_batch=64)
            start = parse_event_id((await until_replay_complete(subscription)).resume_after)
            [mine] = (await bus.publish(user, [ev(user)])).event_ids
            seen: list[EventId] = []
            while not seen or seen[-1] < parse_event_id(mine):
                seen += [parse_event_id(e.event_id) for e in await read_events(subscription, 1)]
            # Contiguous from the start: nothing missed between subscribing and the live events.
            assert [i.n for i in seen] == list(range(start.n + 1, start.n + 1 + len(seen)))
            await subscription.aclose()

    async with open_bus(settings) as bus:
        assert isinstance(bus, RedisEventBus)
        await asyncio.gather(*(churn(bus, 10) for _ in range(20)))
        assert bus.subscriber_count(user) == 0

        async def unsubscribed() -> bool:
            return await redis.pubsub_numsub(channel) == [(channel.encode(), 0)]

        await eventually(unsubscribed, "the channel ends unsubscribed")


async def test_a_killed_pubsub_connection_ends_its_subscriptions_unavailable_and_later_ones_work(
    make_settings: SettingsFactory, redis: aioredis.Redis
) -> None:
    settings = make_settings(redis_pubsub_shards=2)
    users = [new_id("user") for _ in range(40)]
    async with open_bus(settings) as bus:
        assert isinstance(bus, RedisEventBus)
        subscriptions = [bus.subscribe(user) for user in users]
        await asyncio.gather(*(until_replay_complete(s) for s in subscriptions))
        first = [(await bus.publish(u, [ev(u)])).event_ids[0] for u in users]
        assert [e.event_id for s in subscriptions for e in await read_events(s, 1)] == first

        name = redis_client_name(settings)
        shared = [c for c in await redis.client_list(_type="pubsub") if c.get("name") == name]
        assert len(shared) == 2  # 40 users over 2 shards: both in use
        for client in shared:
            await redis.client_kill_filter(_id=client["id"])
        missed = [(await bus.publish(u, [ev(u)])).event_ids[0] for u in users]

        cursors: list[str] = []
        for subscription in subscriptions:
            with pytest.raises(BackendUnavailable) as ended:
                async with asyncio.timeout(TIMEOUT_S):
                    await anext(subscription)
            cursors.append(ended.value.cursor)
        assert cursors == first  # each resumes right after what it delivered
        assert all(bus.subscriber_count(u) == 0 for u in users)

        resumed = [bus.subscribe(u, after=c) for u, c in zip(users, cursors, strict=True)]
        for subscription, lost in zip(resumed, missed, strict=True):
            replay = await read_events(subscription, 1)
            assert [e.event_id for e in replay] == [lost]
            assert isinstance(await anext(subscription), ReplayComplete)
        live = [(await bus.publish(u, [ev(u)])).event_ids[0] for u in users]
        assert [e.event_id for s in resumed for e in await read_events(s, 1)] == live
        for subscription in resumed:
            await subscription.aclose()


async def test_draining_ends_every_subscription_on_every_shard(make_settings: SettingsFactory) -> None:
    users = [new_id("user") for _ in range(20)]
    async with open_bus(make_settings()) as bus:
        subscriptions = [bus.subscribe(user) for user in users]
        await asyncio.gather(*(until_replay_complete(s) for s in subscriptions))
        await bus.drain()
        for subscription in subscriptions:
            with pytest.raises(BusDraining):
                await anext(subscription)
        with pytest.raises(BusDraining):
            await anext(bus.subscribe(users[0]))


@pytest.mark.parametrize("cap", [0, 64])
async def test_events_too_large_for_the_live_message_are_read_from_the_stream(
    make_settings: SettingsFactory, cap: int
) -> None:
    """cap 0: messages carry only ids; cap 64: the small event is carried, the large one is not."""
    user = new_id("user")
    async with open_bus(make_settings(redis_live_body_max_bytes=cap)) as bus:
        subscription = bus.subscribe(user, max_batch=8)
        await until_replay_complete(subscription)
        small = (await bus.publish(user, [ev(user)])).event_ids
        large = (await bus.publish(user, [ev(user, payload='"' + "x" * 500 + '"'), ev(user)])).event_ids
        events = await read_events(subscription, 3)
        assert [e.event_id for e in events] == [*small, *large]
        assert [e.seq for e in events] == [1, 2, 3]
        await subscription.aclose()


async def test_sharded_pubsub_subscribes_with_ssubscribe_and_publishes_with_spublish(
    make_settings: SettingsFactory, redis: aioredis.Redis
) -> None:
    version = str((await redis.info("server"))["redis_version"])
    if int(version.split(".")[0]) < 7:
        pytest.skip(f"sharded Pub/Sub needs Redis 7 or newer; this server is {version}")
    settings = make_settings(redis_sharded_pubsub=True)
    users = [new_id("user") for _ in range(30)]
    async with open_bus(settings) as bus:
        subscriptions = [bus.subscribe(user) for user in users]
        await asyncio.gather(*(until_replay_complete(s) for s in subscriptions))
        assert len(await live_channels(redis, settings, sharded=True)) == len(users)
        assert await live_channels(redis, settings) == []  # nothing on classic Pub/Sub
        published = [(await bus.publish(u, [ev(u)])).event_ids[0] for u in users]
        received = [e for s in subscriptions for e in await read_events(s, 1)]
        assert [(e.user_id, e.event_id) for e in received] == list(zip(users, published, strict=True))
        for subscription in subscriptions:
            await subscription.aclose()

        async def unsubscribed() -> bool:
            return not await live_channels(redis, settings, sharded=True)

        await eventually(unsubscribed, "SUNSUBSCRIBE follows the last subscriber")


BRACE_IDS = ["{", "}", "{}", "}{", "a{b}c", "{user}", "%7B", "{%7B}", "%", "ユーザー{1}", "user_plain"]


def test_every_key_of_a_user_is_on_one_slot_and_no_two_users_share_a_tag_whatever_the_braces(
    backend: str,
) -> None:
    assert backend == "redis"  # the module's parametrization; the key layout needs no server
    tags = {hash_tag(user_id) for user_id in BRACE_IDS}
    assert len(tags) == len(BRACE_IDS)  # the escape is injective
    assert not any("{" in tag or "}" in tag for tag in tags)
    assert hash_tag("user_plain") == "user_plain"  # ordinary ids stay readable
    for user_id in BRACE_IDS:
        keys = user_keys("runwire", user_id)
        slots = {key_slot(key.encode()) for key in keys}
        assert slots == {key_slot(hash_tag(user_id).encode())}, user_id


async def test_users_with_braces_in_their_ids_get_their_own_events_on_one_slot(
    make_settings: SettingsFactory, redis: aioredis.Redis
) -> None:
    settings = make_settings()
    async with open_bus(settings) as bus:
        subscriptions = [bus.subscribe(user_id) for user_id in BRACE_IDS]
        await asyncio.gather(*(until_replay_complete(s) for s in subscriptions))
        published = [(await bus.publish(u, [ev(u)])).event_ids[0] for u in BRACE_IDS]
        for user_id, subscription, event_id in zip(BRACE_IDS, subscriptions, published, strict=True):
            [event] = await read_events(subscription, 1)
            assert (event.user_id, event.event_id) == (user_id, event_id)
            await subscription.aclose()
    keys = [key async for key in redis.scan_iter(match=f"{settings.redis_key_prefix}:*", count=1000)]
    by_tag: dict[bytes, set[int]] = {}
    for key in keys:
        tag = key[key.index(b"{") : key.index(b"}") + 1]
        by_tag.setdefault(tag, set()).add(key_slot(key))
    assert len(by_tag) == len(BRACE_IDS)
    assert all(len(slots) == 1 for slots in by_tag.values())


async def test_closing_the_bus_closes_every_connection_it_opened(
    make_settings: SettingsFactory, redis: aioredis.Redis
) -> None:
    settings = make_settings()
    async with open_bus(settings) as bus:
        subscriptions = [bus.subscribe(new_id("user")) for _ in range(8)]
        await asyncio.gather(*(until_replay_complete(s) for s in subscriptions))
        assert await bridge_connections(redis, settings, "pubsub") >= 1
        for subscription in subscriptions:
            await subscription.aclose()

    async def all_closed() -> bool:
        return await bridge_connections(redis, settings) == 0

    await eventually(all_closed, "no connection of the bridge is left once its bus is closed")


@pytest.mark.parametrize("cap", [0, 65_536])
async def test_a_subscriber_that_stops_reading_is_cut_off_and_resumes_without_loss(
    make_settings: SettingsFactory, cap: int
) -> None:
    """Events carried in live messages or fetched from the stream: the same cut-off, the same cursor."""
    user = new_id("user")
    settings = make_settings(subscriber_queue=4, max_events_per_publish=4, redis_live_body_max_bytes=cap)
    async with open_bus(settings) as bus:
        stalled = bus.subscribe(user)
        start = (await until_replay_complete(stalled)).resume_after
        published = [(await bus.publish(user, [ev(user)])).event_ids[0] for _ in range(20)]

        async def cut_off() -> bool:  # by the shard's reader, while the subscriber was not reading
            return bus.subscriber_count(user) == 0

        await eventually(cut_off, "the stalled subscriber is cut off")
        with pytest.raises(SubscriberOverflow) as ended:
            await anext(stalled)
        assert ended.value.cursor == start  # it delivered nothing

        resumed = bus.subscribe(user, after=ended.value.cursor, max_batch=64)
        replayed: list[str] = []
        async with asyncio.timeout(TIMEOUT_S):
            async for item in resumed:
                if isinstance(item, ReplayComplete):
                    break
                assert isinstance(item, Events)
                replayed += [e.event_id for e in item.parse()]
        assert replayed == published
        await resumed.aclose()
