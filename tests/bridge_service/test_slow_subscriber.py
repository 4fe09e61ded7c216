"""A subscriber that stops reading is cut off alone, and resumes without loss."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from runwire.bridge.v1 import bridge_pb2, bridge_pb2_grpc
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

QUEUE = 16
BATCH = 8
EVENTS = 1200
PAD = {"reasoning": "x" * 1000}


async def test_slow_subscriber_is_ended_alone_and_resumes_from_its_cursor(
    make_settings: SettingsFactory, make_context: ContextFactory
) -> None:
    settings = make_settings(subscriber_queue=QUEUE, max_events_per_publish=BATCH)
    async with open_bridge(settings) as bridge:
        alice, bob = make_context(), make_context()
        # The slow client's own channel has a fixed 64 KiB flow-control window
        # (no BDP probing), so once it stops reading the server cannot send to it.
        async with grpc.aio.insecure_channel(
            bridge.server.address, options=[("grpc.http2.bdp_probe", 0)]
        ) as slow_channel:
            slow = bridge_pb2_grpc.BridgeServiceStub(slow_channel).Subscribe(
                bridge_pb2.SubscribeRequest(user_context=alice)
            )
            fast, other_user = bridge.subscribe(alice), bridge.subscribe(bob)
            for call in (slow, fast, other_user):
                await read_until_replay_complete(call)

            fast_reader = asyncio.create_task(read_events(fast, EVENTS))
            bob_reader = asyncio.create_task(read_events(other_user, EVENTS))
            alice_ids: list[str] = []
            bob_ids: list[str] = []
            for start in range(1, EVENTS + 1, BATCH):
                seqs = range(start, start + BATCH)
                alice_ids += await bridge.publish(alice, *(event(alice, seq=s, payload=PAD) for s in seqs))
                bob_ids += await bridge.publish(bob, *(event(bob, seq=s, payload=PAD) for s in seqs))

            assert ids_of(await fast_reader) == alice_ids
            assert ids_of(await bob_reader) == bob_ids
            # The overflowed subscriber holds no queue any more; the fast one is untouched.
            await bridge.wait_for_subscribers(alice.user_id, 1)

            delivered: list[str] = []
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                while True:
                    delivered.append((await read_item(slow)).event.event_id)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            details = caught.value.details() or ""
            assert details == f"subscriber fell behind; resume after {delivered[-1]}"
            assert 0 < len(delivered) < EVENTS
            assert delivered == alice_ids[: len(delivered)]

            resumed = bridge.subscribe(alice, after=delivered[-1])
            rest, replayed = await read_until_replay_complete(resumed)
            assert delivered + [item.event.event_id for item in rest] == alice_ids
            assert replayed == EVENTS - len(delivered)
            for call in (resumed, fast, other_user):
                call.cancel()
