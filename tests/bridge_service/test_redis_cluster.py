"""The Redis backend on a real three-node Redis Cluster that the test starts itself.

The ``redis_cluster`` fixture starts three primaries (``redis-server
--cluster-enabled yes``) on free loopback ports in a temporary directory,
joins them with ``redis-cli --cluster create``, waits for
``cluster_state:ok`` on every node and kills them afterwards. Without
``redis-server``/``redis-cli`` the tests are skipped, or fail under
``RUNWIRE_REQUIRE_SERVICES=1`` (as ``tests/conftest.py`` does for servers).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.crc import key_slot

from bridge_service.app import open_bus, redis_client_name
from bridge_service.bus import BackendUnavailable, BusItem, Events, ReplayComplete, RunEvent
from bridge_service.redis_bus import RedisEventBus
from bridge_service.redis_scripts import user_keys
from bridge_service.settings import BridgeSettings
from runwire.common.v1 import context_pb2
from runwire_common.ids import new_id
from tests.bridge_service import harness
from tests.bridge_service.harness import settings_for

RUN = "run_0123456789abcdefghij"
TIMEOUT_S = 30.0
NODES = 3
Subscription = AsyncGenerator[BusItem, None]


def _unavailable(reason: str) -> None:
    if os.environ.get("RUNWIRE_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason}, and RUNWIRE_REQUIRE_SERVICES=1 forbids skipping")
    pytest.skip(reason)


def _free_port() -> int:
    """A free loopback port P whose cluster bus port P + 10000 is free as well."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port + 10_000 > 65_535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
        return port


def _cluster_view(port: int) -> list[tuple[int, int, int]] | None:
    """``port``'s slot map (first, last, primary port) once it reports ``cluster_state:ok``."""
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
    try:
        info = client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
        slots = client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
    except redis.RedisError:
        return None
    finally:
        client.close()
    text = info.decode() if isinstance(info, bytes) else str(info)
    if "cluster_state:ok" not in text or "cluster_known_nodes:3" not in text:
        return None
    return sorted((int(first), int(last), int(primary[1])) for first, last, primary, *_ in slots)


def _cluster_ok(ports: list[int]) -> bool:
    """Every node is ok and they all agree on the slot map (no MOVED among fresh nodes)."""
    views = [_cluster_view(port) for port in ports]
    return views[0] is not None and len(views[0]) == NODES and all(view == views[0] for view in views)


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """The ports of a fresh three-primary Redis Cluster on 127.0.0.1 (no replicas, no persistence)."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        _unavailable("redis-server and redis-cli are needed to start a Redis Cluster")
    assert server is not None and cli is not None
    directory: Path = tmp_path_factory.mktemp("redis-cluster")
    ports: list[int] = []
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(NODES):
            port = _free_port()
            ports.append(port)
            processes.append(
                subprocess.Popen(
                    [
                        server,
                        "--port", str(port),
                        "--bind", "127.0.0.1",
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", f"nodes-{port}.conf",
                        "--appendonly", "no",
                        "--save", "",
                        "--daemonize", "no",
                        "--dir", str(directory),
                        "--logfile", f"redis-{port}.log",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        deadline = time.monotonic() + 10
        for port in ports:
            while True:
                try:
                    redis.Redis(host="127.0.0.1", port=port, socket_timeout=1).ping()
                    break
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        addresses = [f"127.0.0.1:{p}" for p in ports]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        deadline = time.monotonic() + 20
        while not _cluster_ok(ports):
            assert time.monotonic() < deadline, "the cluster did not reach cluster_state:ok"
            time.sleep(0.1)
        yield ports
    finally:
        for process in processes:
            process.kill()
        for process in processes:
            process.wait(timeout=10)


@pytest.fixture
async def nodes(redis_cluster: list[int]) -> AsyncIterator[list[aioredis.Redis]]:
    """A plain client per node (admin commands, CLIENT LIST, PUBSUB SHARDCHANNELS)."""
    clients = [aioredis.Redis(host="127.0.0.1", port=port) for port in redis_cluster]
    yield clients
    for client in clients:
        await client.aclose()


@pytest.fixture
def cluster_settings(redis_cluster: list[int], attestation_key_spec: str) -> BridgeSettings:
    return settings_for(
        attestation_key_spec,
        backend="redis",
        redis_url=f"redis://127.0.0.1:{redis_cluster[1]}/0",
        redis_key_prefix=f"rwtest-{new_id('p')}",
        redis_cluster=True,
        redis_sharded_pubsub=True,
        redis_pubsub_shards=2,
        redis_max_connections=6,
    )


def ev(user_id: str) -> RunEvent:
    return RunEvent(user_id=user_id, run_id=RUN, seq=0, type="agent_thinking", payload_json="{}")


async def until_replay_complete(subscription: Subscription) -> tuple[list[str], ReplayComplete]:
    replayed: list[str] = []
    async with asyncio.timeout(TIMEOUT_S):
        async for item in subscription:
            if isinstance(item, ReplayComplete):
                return replayed, item
            assert isinstance(item, Events), item
            replayed += [event.event_id for event in item.parse()]
    raise AssertionError("the subscription ended before ReplayComplete")


async def read_events(subscription: Subscription, count: int) -> list[RunEvent]:
    events: list[RunEvent] = []
    async with asyncio.timeout(TIMEOUT_S):
        while len(events) < count:
            item = await anext(subscription)
            assert isinstance(item, Events), item
            events += item.parse()
    return events


async def node_of_slot(nodes: list[aioredis.Redis], slot: int) -> int:
    """The index in ``nodes`` of the primary owning ``slot``."""
    ports = [int(node.connection_pool.connection_kwargs["port"]) for node in nodes]
    for first, last, primary, *_ in await nodes[0].execute_command("CLUSTER", "SLOTS"):  # type: ignore[no-untyped-call]
        if first <= slot <= last:
            return ports.index(int(primary[1]))
    raise AssertionError(f"slot {slot} is not covered")


async def bridge_connections(node: aioredis.Redis, name: str, kind: str | None = None) -> int:
    clients = await (node.client_list(_type=kind) if kind else node.client_list())
    return sum(1 for client in clients if client.get("name") == name)


async def shard_channels(nodes: list[aioredis.Redis], prefix: str) -> list[bytes]:
    names: list[bytes] = []
    for node in nodes:
        names += await node.execute_command("PUBSUB", "SHARDCHANNELS", f"{prefix}:*")  # type: ignore[no-untyped-call]
    return names


async def move_slot(nodes: list[aioredis.Redis], slot: int, target: int) -> None:
    """Migrate ``slot`` (with its keys) to ``nodes[target]``, as a resharding does."""
    source = await node_of_slot(nodes, slot)
    ids = [(await node.execute_command("CLUSTER", "MYID")).decode() for node in nodes]  # type: ignore[no-untyped-call]
    await nodes[target].execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])  # type: ignore[no-untyped-call]
    await nodes[source].execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])  # type: ignore[no-untyped-call]
    keys = await nodes[source].execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)  # type: ignore[no-untyped-call]
    if keys:
        port = nodes[target].connection_pool.connection_kwargs["port"]
        await nodes[source].execute_command("MIGRATE", "127.0.0.1", port, "", 0, 5000, "KEYS", *keys)  # type: ignore[no-untyped-call]
    for index in (target, source, *(i for i in range(len(nodes)) if i not in (target, source))):
        await nodes[index].execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target])  # type: ignore[no-untyped-call]


def test_the_cluster_mode_needs_sharded_pubsub(attestation_key_spec: str) -> None:
    with pytest.raises(ValidationError, match="redis_cluster requires redis_sharded_pubsub"):
        settings_for(attestation_key_spec, backend="redis", redis_cluster=True)


async def test_many_users_on_every_node_get_exactly_their_events_over_few_connections_per_node(
    cluster_settings: BridgeSettings, nodes: list[aioredis.Redis]
) -> None:
    settings = cluster_settings
    name = redis_client_name(settings)
    users = [new_id("user") for _ in range(200)] + [f"{{b{i}}}" for i in range(20)] + ["}{", "{}", "a{b}c%7B"]
    homes = [
        await node_of_slot(nodes, key_slot(user_keys(settings.redis_key_prefix, u).live.encode()))
        for u in users
    ]
    assert sorted(set(homes)) == [0, 1, 2], "the users' slots cover every node"
    per_node_limit = settings.redis_max_connections + settings.redis_pubsub_shards

    async with open_bus(settings) as bus:
        assert isinstance(bus, RedisEventBus)
        # Three retained events each: the subscriptions replay the two after the first.
        stored = await asyncio.gather(*(bus.publish(u, [ev(u), ev(u), ev(u)]) for u in users))
        cursors = {u: r.event_ids[0] for u, r in zip(users, stored, strict=True)}
        subscriptions = [bus.subscribe(u, after=cursors[u], max_batch=8) for u in users]
        replays = await asyncio.gather(*(until_replay_complete(s) for s in subscriptions))
        for user, result, (replayed, complete) in zip(users, stored, replays, strict=True):
            assert replayed == list(result.event_ids[1:]), user
            assert complete.resume_after == result.event_ids[2]
        assert len(await shard_channels(nodes, settings.redis_key_prefix)) == len(users)
        for node in nodes:
            assert 1 <= await bridge_connections(node, name, "pubsub") <= settings.redis_pubsub_shards
            assert await bridge_connections(node, name) <= per_node_limit

        published: dict[str, list[str]] = {}
        for start in range(0, len(users), 100):  # a hundred concurrent publishers at a time
            group = users[start : start + 100]
            results = await asyncio.gather(*(bus.publish(u, [ev(u), ev(u)]) for u in group))
            published.update({u: list(r.event_ids) for u, r in zip(group, results, strict=True)})
        received = await asyncio.gather(*(read_events(s, 2) for s in subscriptions))
        for user, events in zip(users, received, strict=True):
            assert {e.user_id for e in events} == {user}  # nothing foreign
            assert [e.event_id for e in events] == published[user]  # nothing missing, nothing twice
        sentinels = await asyncio.gather(*(bus.publish(u, [ev(u)]) for u in users))
        following = await asyncio.gather(*(read_events(s, 1) for s in subscriptions))
        for user, sentinel, [event] in zip(users, sentinels, following, strict=True):
            assert (event.user_id, event.event_id) == (user, sentinel.event_ids[0])

        counts = [await bridge_connections(node, name) for node in nodes]
        assert all(count <= per_node_limit for count in counts), counts
        by_node = bus.pubsub_connections_by_node()
        assert len(by_node) == NODES and all(1 <= n <= settings.redis_pubsub_shards for n in by_node.values())

        for subscription in subscriptions:
            await subscription.aclose()
        assert all(bus.subscriber_count(u) == 0 for u in users)
        async with asyncio.timeout(TIMEOUT_S):
            while await shard_channels(nodes, settings.redis_key_prefix):
                await asyncio.sleep(0.02)
        assert bus.live_channels() == []
    for node in nodes:
        assert await bridge_connections(node, name) == 0  # all closed with the bus


async def test_a_moved_slot_ends_its_subscriptions_with_their_cursor_and_they_resume_on_the_new_node(
    cluster_settings: BridgeSettings, nodes: list[aioredis.Redis]
) -> None:
    settings = cluster_settings
    prefix = settings.redis_key_prefix

    def slot(user: str) -> int:
        return key_slot(user_keys(prefix, user).live.encode())

    mover = new_id("user")
    home = await node_of_slot(nodes, slot(mover))

    # A neighbour on the same node (another slot, same shard connections): it must not notice.
    async def user_on_home() -> str:
        while True:
            user = new_id("user")
            if slot(user) != slot(mover) and await node_of_slot(nodes, slot(user)) == home:
                return user

    neighbour = await user_on_home()
    late = await user_on_home()
    target = (home + 1) % NODES
    moved_back: list[tuple[int, int]] = []
    async with open_bus(settings) as bus:
        assert isinstance(bus, RedisEventBus)
        try:
            subscription = bus.subscribe(mover)
            other = bus.subscribe(neighbour)
            await until_replay_complete(subscription)
            await until_replay_complete(other)
            [first] = (await bus.publish(mover, [ev(mover)])).event_ids
            assert [e.event_id for e in await read_events(subscription, 1)] == [first]

            # The server pushes `sunsubscribe` for the migrated slot: that subscription ends, with its cursor.
            await move_slot(nodes, slot(mover), target)
            moved_back.append((slot(mover), home))
            with pytest.raises(BackendUnavailable) as ended:
                await read_events(subscription, 1)
            assert ended.value.cursor == first
            [second] = (await bus.publish(mover, [ev(mover)])).event_ids  # the command client follows MOVED
            resumed = bus.subscribe(mover, after=ended.value.cursor)
            replayed, _ = await until_replay_complete(resumed)
            assert replayed == [second]
            [third] = (await bus.publish(mover, [ev(mover)])).event_ids
            assert [e.event_id for e in await read_events(resumed, 1)] == [third]
            [own] = (await bus.publish(neighbour, [ev(neighbour)])).event_ids
            assert [e.event_id for e in await read_events(other, 1)] == [own]

            # A slot that moved while the bus's map was fresh: SSUBSCRIBE gets -MOVED, the
            # subscription fails with its cursor, and the next one goes to the new node.
            [before] = (await bus.publish(late, [ev(late)])).event_ids
            await move_slot(nodes, slot(late), target)
            moved_back.append((slot(late), home))
            refused = bus.subscribe(late, after=before)
            with pytest.raises(BackendUnavailable) as failed:
                await until_replay_complete(refused)
            assert failed.value.cursor == before
            retried = bus.subscribe(late, after=before)
            assert (await until_replay_complete(retried))[0] == []
            [after] = (await bus.publish(late, [ev(late)])).event_ids
            assert [e.event_id for e in await read_events(retried, 1)] == [after]
            for open_subscription in (resumed, other, retried):
                await open_subscription.aclose()
        finally:
            for moved_slot, owner in moved_back:
                await move_slot(nodes, moved_slot, owner)
    assert await shard_channels(nodes, prefix) == []


async def test_the_bridge_service_serves_publish_and_subscribe_from_the_cluster(
    cluster_settings: BridgeSettings, make_context: Callable[..., context_pb2.UserContext]
) -> None:
    """The composition root builds the cluster client and fan-out from the settings alone."""
    ctx = make_context("{brace}user")
    async with harness.open_bridge(cluster_settings) as bridge:
        [first] = await bridge.publish(ctx, harness.event(ctx, seq=1))
        call = bridge.subscribe(ctx, after=first)
        _, replayed = await harness.read_until_replay_complete(call)
        assert replayed == 0
        [second] = await bridge.publish(ctx, harness.event(ctx, seq=2))
        assert harness.ids_of(await harness.read_events(call, 1)) == [second]
        call.cancel()
