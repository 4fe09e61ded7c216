"""Many users at once: every subscriber gets exactly its own user's events."""

from __future__ import annotations

import asyncio

from runwire.common.v1 import event_pb2
from tests.bridge_service.harness import (
    Bridge,
    ContextFactory,
    SubscribeCall,
    event,
    ids_of,
    read_events,
    read_until_replay_complete,
    strictly_increasing,
)

USERS = 20
SUBSCRIBERS_PER_USER = 2
RUNS_PER_USER = 3
EVENTS_PER_RUN = 20


async def test_twenty_users_publishing_at_once_each_receive_exactly_their_own_events(
    bridge: Bridge, make_context: ContextFactory
) -> None:
    contexts = [make_context() for _ in range(USERS)]
    calls = {ctx.user_id: [bridge.subscribe(ctx) for _ in range(SUBSCRIBERS_PER_USER)] for ctx in contexts}
    for user_calls in calls.values():
        for call in user_calls:
            await read_until_replay_complete(call)

    async def publish_runs(index: int) -> list[str]:
        ctx = contexts[index]
        runs = [f"run_{index:04d}_{run:04d}_padpadpadpad" for run in range(RUNS_PER_USER)]
        published: list[str] = []
        # Interleave the user's runs in batches of varying size, yielding between calls.
        seq = 1
        while seq <= EVENTS_PER_RUN:
            size = 1 + (index + seq) % 4
            batch = [
                event(ctx, run_id=run, seq=s)
                for s in range(seq, min(seq + size, EVENTS_PER_RUN + 1))
                for run in runs
            ]
            published += await bridge.publish(ctx, *batch)
            seq += size
        return published

    published = await asyncio.gather(*(publish_runs(i) for i in range(USERS)))
    expected_count = RUNS_PER_USER * EVENTS_PER_RUN

    async def receive(call_list: list[SubscribeCall], count: int) -> list[list[event_pb2.RunEvent]]:
        return [await read_events(call, count) for call in call_list]

    received = await asyncio.gather(*(receive(calls[ctx.user_id], expected_count) for ctx in contexts))

    for ctx, own_ids, per_subscriber in zip(contexts, published, received, strict=True):
        for events in per_subscriber:
            foreign = [e for e in events if e.user_id != ctx.user_id]
            assert foreign == []
            assert ids_of(events) == own_ids  # none missing, none repeated, same order
            assert len(set(ids_of(events))) == expected_count
            assert strictly_increasing(ids_of(events))
            for run_id in {e.run_id for e in events}:
                assert [e.seq for e in events if e.run_id == run_id] == list(range(1, EVENTS_PER_RUN + 1))

    for user_calls in calls.values():
        for call in user_calls:
            call.cancel()
    for ctx in contexts:
        await bridge.wait_for_subscribers(ctx.user_id, 0)
