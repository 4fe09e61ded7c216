"""Redis keeps each user's log within its byte bound and a run's fencing state for its retry window."""

from __future__ import annotations

import json

import pytest
import redis.asyncio as aioredis

from bridge_service.app import open_bus
from bridge_service.redis_bus import RedisEventBus
from tests.bridge_service.harness import ContextFactory, SettingsFactory, event

pytestmark = pytest.mark.parametrize("backend", ["redis"])

LARGE = json.dumps({"reasoning": "x" * 60_000})  # ~60 KiB, under the 64 KiB payload cap
MAX_BYTES = 256 * 1024


async def test_one_user_publishing_large_events_keeps_at_most_its_byte_bound_and_others_are_untouched(
    make_settings: SettingsFactory, make_context: ContextFactory, redis_url: str
) -> None:
    settings = make_settings(log_max_bytes=MAX_BYTES)
    hog, other = make_context(), make_context()
    client = aioredis.Redis.from_url(redis_url)
    try:
        async with open_bus(settings) as bus:
            assert isinstance(bus, RedisEventBus)
            small = await bus.publish(other.user_id, [event(other, seq=s) for s in range(1, 4)])
            for start in range(1, 41, 5):  # 40 events, ~2.4 MB in all
                batch = [event(hog, seq=s, payload_json=LARGE) for s in range(start, start + 5)]
                await bus.publish(hog.user_id, batch)
            kept = await bus.retained(hog.user_id)
            stream = bus.keys(hog.user_id).stream
            rows = await client.xrange(stream, "-", "+")
            stored = sum(len(fields[b"e"]) for _, fields in rows)
            usage = await client.memory_usage(stream, samples=0)
            assert usage is not None
            assert 1 <= len(kept) <= MAX_BYTES // 60_000
            assert stored <= MAX_BYTES
            assert usage <= MAX_BYTES + 32 * 1024, usage  # the bytes plus the stream's own overhead
            assert await bus.retained(other.user_id) == list(small.event_ids)
    finally:
        await client.aclose()


async def test_a_run_is_still_fenced_after_1500_later_runs_of_the_same_user(
    make_settings: SettingsFactory, make_context: ContextFactory
) -> None:
    ctx = make_context()
    first_run = "run_first0000000000000000"
    async with open_bus(make_settings()) as bus:
        end = event(ctx, run_id=first_run, seq=2, type="agent_cancelled", payload={"reason": "x"})
        stored = await bus.publish(ctx.user_id, [event(ctx, run_id=first_run, seq=1), end])
        assert all(stored.event_ids)
        for start in range(0, 1500, 500):
            later = [
                event(
                    ctx,
                    run_id=f"run_later{index:016d}",
                    seq=1,
                    type="agent_cancelled",
                    payload={"reason": "x"},
                )
                for index in range(start, start + 500)
            ]
            assert all((await bus.publish(ctx.user_id, later)).event_ids)
        retried = await bus.publish(ctx.user_id, [end])
        assert retried.event_ids == ("",)  # fenced: the retry of the terminal event is not stored again


async def test_fencing_state_beyond_the_hard_bound_is_forgotten_oldest_first_even_within_the_hold(
    make_settings: SettingsFactory, make_context: ContextFactory, redis_url: str
) -> None:
    ctx = make_context()
    runs = [f"run_hard{i}_0123456789abcdef" for i in range(5)]
    client = aioredis.Redis.from_url(redis_url)
    try:
        async with open_bus(make_settings(run_state_capacity=2, run_state_max=3)) as bus:
            assert isinstance(bus, RedisEventBus)
            for run in runs:
                ended = event(ctx, run_id=run, seq=1, type="agent_cancelled", payload={"reason": "x"})
                await bus.publish(ctx.user_id, [ended])
            kept = sorted(key.decode() for key in await client.hkeys(bus.keys(ctx.user_id).runs))
            assert kept == runs[2:]
    finally:
        await client.aclose()
