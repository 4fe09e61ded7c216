"""A Redis out of memory refuses one user's batch retryably; an evicting Redis is refused at start.

Each test runs a ``redis-server`` of its own (the shared one is never reconfigured).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from bridge_service.app import open_bus
from bridge_service.redis_policy import EvictingRedis
from execution_service.publisher import StreamPublisher
from execution_service.retry import Backoff, retry_unavailable
from tests.bridge_service.harness import (
    ContextFactory,
    SettingsFactory,
    event,
    open_bridge,
    read_events,
    read_until_replay_complete,
)
from tests.bridge_service.own_redis import own_redis_server

pytestmark = pytest.mark.parametrize("backend", ["redis"])


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[str]:
    with own_redis_server(tmp_path, "--maxmemory-policy", "noeviction") as url:
        yield url


async def fill_memory(client: aioredis.Redis) -> None:
    """Let Redis refuse every write: ``maxmemory`` a little above what is used, then ballast up to it."""
    used = int((await client.info("memory"))["used_memory"])
    await client.config_set("maxmemory", used + 1024 * 1024)
    for index in range(1000):
        try:
            await client.set(f"ballast:{index}", b"x" * 64 * 1024)
        except redis_errors.OutOfMemoryError:
            # Well below what is used now, so a freed query buffer cannot make room for a write.
            used = int((await client.info("memory"))["used_memory"])
            await client.config_set("maxmemory", used - 256 * 1024)
            return
    raise AssertionError("Redis never ran out of memory")


async def free_memory(client: aioredis.Redis) -> None:
    await client.delete(*[key async for key in client.scan_iter(match="ballast:*")])


async def test_a_full_redis_refuses_one_users_batch_retryably_and_other_subscriptions_stay_open(
    make_settings: SettingsFactory, make_context: ContextFactory, own_redis: str
) -> None:
    settings = make_settings(redis_url=own_redis)
    writer, reader = make_context(), make_context()
    client = aioredis.Redis.from_url(own_redis)
    publisher: StreamPublisher | None = None
    try:
        async with open_bridge(settings) as bridge:
            publisher = StreamPublisher(
                bridge.server.address, open_channel=grpc.aio.insecure_channel, ack_timeout_s=5.0
            )
            await bridge.publish(reader, event(reader, seq=1))
            await bridge.publish(writer, event(writer, seq=1))
            call = bridge.subscribe(reader)
            await read_until_replay_complete(call)
            await fill_memory(client)

            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await bridge.publish(writer, event(writer, seq=2))
            assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
            # The execution side's publisher retries the refused batch until Redis has room again.
            retried = asyncio.create_task(
                retry_unavailable(
                    lambda: publisher.publish(writer, [event(writer, seq=2)]),
                    Backoff(budget_s=10.0, initial_s=0.05, max_s=0.2),
                )
            )
            await asyncio.sleep(0.5)
            assert not retried.done()
            await free_memory(client)
            async with asyncio.timeout(5):
                assert all(await retried)

            # The other user's subscription never ended: it receives what is published next.
            published = await bridge.publish(reader, event(reader, seq=2))
            assert [e.event_id for e in await read_events(call, 1)] == published
            call.cancel()
    finally:
        if publisher is not None:
            await publisher.aclose()
        await client.aclose()


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru"])
async def test_the_bridge_refuses_to_start_on_an_evicting_redis(
    make_settings: SettingsFactory, tmp_path: Path, policy: str
) -> None:
    with own_redis_server(tmp_path, "--maxmemory-policy", policy) as url:
        with pytest.raises(EvictingRedis, match=f"maxmemory-policy is {policy}.*noeviction"):
            async with open_bus(make_settings(redis_url=url)):
                pass


async def test_the_bridge_warns_when_redis_hides_its_eviction_policy(
    make_settings: SettingsFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with own_redis_server(tmp_path, "--rename-command", "CONFIG", '""') as url:
        with caplog.at_level(logging.WARNING, logger="runwire.bridge.redis"):
            async with open_bus(make_settings(redis_url=url)):
                pass
    assert any("maxmemory-policy" in record.getMessage() for record in caplog.records)


async def test_the_bridge_starts_on_an_evicting_redis_when_told_to_with_a_warning(
    make_settings: SettingsFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with own_redis_server(tmp_path, "--maxmemory-policy", "allkeys-lru") as url:
        with caplog.at_level(logging.WARNING, logger="runwire.bridge.redis"):
            async with open_bus(make_settings(redis_url=url, redis_allow_eviction=True)):
                pass
    assert any("allkeys-lru" in record.getMessage() for record in caplog.records)
