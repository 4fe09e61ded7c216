"""Publishing over ``PublishStream`` against a real bridge: order, batching, broken streams."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import grpc
import pytest

from bridge_service.settings import BridgeSettings
from execution_service.emitter import RunEmitter
from execution_service.identity import RunIdentity
from execution_service.outcomes import Outcome
from execution_service.publisher import StreamPublisher
from execution_service.retry import Backoff
from runwire.bridge.v1 import bridge_pb2, bridge_pb2_grpc
from runwire.common.v1 import context_pb2, event_pb2
from runwire_common.attestation import ContextAttestor
from runwire_common.errors import InvalidArgument
from runwire_common.ids import new_id
from runwire_common.replicas import rendezvous
from tests.bridge_service.harness import delete_keys, open_bridge, settings_for
from tests.bridge_service.harness import event as run_event
from tests.bridge_service.stream_harness import StreamBridge, open_stream_bridge
from tests.support.watcher import watching

WAIT_S = 10.0
ContextFactory = Callable[..., context_pb2.UserContext]


class Channels:
    """The ``open_channel`` of a publisher under test: keeps every channel it opened."""

    def __init__(self) -> None:
        self.opened: list[grpc.aio.Channel] = []

    def __call__(self, address: str) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(address)
        self.opened.append(channel)
        return channel


class Run:
    """One run's emitter publishing through ``publisher``, recording the batches it sent."""

    def __init__(
        self, publisher: StreamPublisher, attestor: ContextAttestor, *, user_id: str, budget_s: float = 10.0
    ) -> None:
        self.run_id = new_id("run")
        base = context_pb2.UserContext(
            user_id=user_id, thread_id=new_id("thread"), request_id=new_id("req"), run_id=self.run_id
        )
        self.identity = RunIdentity(base, attestor=attestor, ttl_s=120)
        self.batches: list[list[int]] = []
        self._publisher = publisher
        self.emitter = RunEmitter(
            user=self.identity.context(),
            run_id=self.run_id,
            thread_id=base.thread_id,
            agent="scripted",
            publish=self._publish,
            log=logging.LoggerAdapter(logging.getLogger("test.publish"), {}),
            retry=Backoff(budget_s=budget_s, initial_s=0.05, max_s=0.2),
        )

    async def _publish(self, events: Sequence[event_pb2.RunEvent]) -> None:
        self.batches.append([event.seq for event in events])
        await self._publisher.publish(self.identity.context(), events)

    async def think(self, *texts: str) -> None:
        for text in texts:
            await self.emitter.thinking(text)

    async def finish(self) -> None:
        await self.emitter.emit_terminal(Outcome.cancelled("done"), duration_ms=0)
        await self.emitter.aclose()


@asynccontextmanager
async def publisher_to(address: str, channels: Channels | None = None) -> AsyncIterator[StreamPublisher]:
    publisher = StreamPublisher(address, open_channel=channels or Channels(), ack_timeout_s=WAIT_S)
    try:
        yield publisher
    finally:
        await publisher.aclose()


@pytest.fixture
async def bridge(attestation_key_spec: str) -> AsyncIterator[StreamBridge]:
    async with open_stream_bridge(settings_for(attestation_key_spec)) as running:
        yield running


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    prefix = f"rwtest-{new_id('p')}"
    yield prefix
    await delete_keys(redis_url, prefix)


async def stored(stub: bridge_pb2_grpc.BridgeServiceAsyncStub, ctx: context_pb2.UserContext) -> list[Any]:
    """Every event the bridge retains for ``ctx``'s user, replayed from the start."""
    call = stub.Subscribe(bridge_pb2.SubscribeRequest(user_context=ctx, after="0-0"))
    events: list[event_pb2.RunEvent] = []
    try:
        async with asyncio.timeout(WAIT_S):
            async for item in call:
                if item.HasField("replay_complete"):
                    return events
                if item.HasField("event"):
                    events.append(item.event)
    finally:
        call.cancel()
    raise AssertionError("the replay never completed")


def seqs_of(events: Sequence[event_pb2.RunEvent], run_id: str) -> list[int]:
    return [event.seq for event in events if event.run_id == run_id]


async def test_the_events_of_concurrent_runs_arrive_in_order_over_one_stream(
    bridge: StreamBridge, attestor: ContextAttestor, make_context: ContextFactory
) -> None:
    users = [new_id("user") for _ in range(3)]
    async with publisher_to(bridge.server.address) as publisher:
        runs = [Run(publisher, attestor, user_id=user) for user in users for _ in range(2)]
        async with watching(bridge.stub, make_context(users[0]), timeout_s=WAIT_S) as first:

            async def drive(run: Run) -> None:
                for index in range(20):
                    await run.think(f"step {index}")
                    if index % 3 == 0:
                        await asyncio.sleep(0)  # interleave the runs
                await run.finish()

            await asyncio.gather(*(drive(run) for run in runs))
            for run in runs[:2]:
                await first.until_terminal(run.run_id)
        assert bridge.metric("runwire_bridge_publish_streams") == 1
        assert publisher.stream_reconnects == 0
        assert publisher.events_published == 6 * 21
    for run in runs[:2]:
        assert seqs_of(first.events, run.run_id) == list(range(1, 22))
    for user in users[1:]:
        events = await stored(bridge.stub, make_context(user))
        for run in runs:
            if run.identity.context().user_id == user:
                assert seqs_of(events, run.run_id) == list(range(1, 22))


async def test_a_batch_leaves_at_once_and_only_what_queued_meanwhile_is_batched(
    bridge: StreamBridge, attestor: ContextAttestor, make_context: ContextFactory
) -> None:
    user = new_id("user")
    async with publisher_to(bridge.server.address) as publisher:
        run = Run(publisher, attestor, user_id=user)
        bridge.bus.hold(user)
        await run.think("first")
        # Nothing else is emitted: the first event reaches the bridge on its own, without a timer.
        async with asyncio.timeout(WAIT_S):
            await bridge.bus.waiting[user].wait()
        assert publisher.batches_in_flight == 1
        await run.think("second", "third", "fourth")
        await asyncio.sleep(0.05)  # whatever the emitter might do meanwhile, it waits for the ack
        assert run.batches == [[1]]
        bridge.bus.release(user)
        await run.finish()
        assert publisher.batches_in_flight == 0
    assert run.batches[0] == [1]
    assert run.batches[1][:3] == [2, 3, 4]  # the terminal event may join them
    assert [seq for batch in run.batches for seq in batch] == [1, 2, 3, 4, 5]
    assert seqs_of(await stored(bridge.stub, make_context(user)), run.run_id) == [1, 2, 3, 4, 5]


async def test_a_broken_stream_is_reopened_and_unacknowledged_batches_are_resent_once(
    bridge: StreamBridge, attestor: ContextAttestor, make_context: ContextFactory
) -> None:
    user = new_id("user")
    channels = Channels()
    async with publisher_to(bridge.server.address, channels) as publisher:
        run = Run(publisher, attestor, user_id=user)
        await run.think("acknowledged")
        bridge.bus.hold(user)
        await run.think("in flight")
        async with asyncio.timeout(WAIT_S):
            await bridge.bus.waiting[user].wait()
        await run.think("queued", "behind it")
        # Break the stream while a batch is unacknowledged and more wait behind it.
        await channels.opened[-1].close()
        bridge.bus.release(user)
        await run.think("after the break")
        await run.finish()
        assert publisher.stream_reconnects >= 1
        assert len(channels.opened) >= 2
    events = await stored(bridge.stub, make_context(user))
    assert seqs_of(events, run.run_id) == [1, 2, 3, 4, 5, 6]
    sent = [seq for batch in run.batches for seq in batch]
    assert sent.count(2) >= 2, f"the unacknowledged batch was not resent: {run.batches}"
    assert sorted(set(sent)) == [1, 2, 3, 4, 5, 6]


async def test_a_refused_batch_is_not_retried_and_its_neighbours_are_delivered(
    bridge: StreamBridge, attestor: ContextAttestor
) -> None:
    user = new_id("user")
    async with publisher_to(bridge.server.address) as publisher:
        run = Run(publisher, attestor, user_id=user)
        good = event_pb2.RunEvent(
            user_id=user, run_id=run.run_id, seq=1, type="agent_thinking", payload_json="{}"
        )
        bad = event_pb2.RunEvent(user_id=user, run_id=run.run_id, seq=2, type="no_such_type")
        with pytest.raises(InvalidArgument, match="not an event type"):
            await publisher.publish(run.identity.context(), [good, bad])
        assert await publisher.publish(run.identity.context(), [good]) != [""]


async def test_a_restarted_bridge_gets_every_unacknowledged_batch_and_nothing_twice(
    attestation_key_spec: str,
    redis_url: str,
    redis_prefix: str,
    attestor: ContextAttestor,
    make_context: ContextFactory,
) -> None:
    def settings(port: int = 0) -> BridgeSettings:
        return settings_for(
            attestation_key_spec,
            backend="redis",
            redis_url=redis_url,
            redis_key_prefix=redis_prefix,
            grace_period_s=1,
        ).model_copy(update={"port": port})

    user = new_id("user")
    async with open_bridge(settings()) as first:
        address = first.server.address
        port = int(address.rpartition(":")[2])
        publisher = StreamPublisher(address, open_channel=Channels(), ack_timeout_s=WAIT_S)
        run = Run(publisher, attestor, user_id=user, budget_s=20.0)
        await run.think(*(f"before {i}" for i in range(5)))
        restarted = asyncio.Event()

        async def keep_emitting() -> None:
            for index in range(30):
                await run.think(f"during {index}")
                if index == 10:
                    await restarted.wait()
                await asyncio.sleep(0.01)

        emitting = asyncio.create_task(keep_emitting())
        await asyncio.sleep(0.05)
    try:
        async with open_bridge(settings(port)) as second:
            restarted.set()
            await asyncio.wait_for(emitting, WAIT_S * 2)
            await run.finish()
            events = await stored(second.stub, make_context(user))
        assert publisher.stream_reconnects >= 1
    finally:
        emitting.cancel()
        await publisher.aclose()
    assert seqs_of(events, run.run_id) == list(range(1, 37))


async def test_batches_move_to_the_next_replica_when_theirs_goes_away(
    attestation_key_spec: str,
    redis_url: str,
    redis_prefix: str,
    attestor: ContextAttestor,
    make_context: ContextFactory,
) -> None:
    settings = settings_for(
        attestation_key_spec,
        backend="redis",
        redis_url=redis_url,
        redis_key_prefix=redis_prefix,
        grace_period_s=1,
    )
    async with AsyncExitStack() as stack:
        replicas = [await stack.enter_async_context(open_bridge(settings)) for _ in range(2)]
        addresses = [replica.server.address for replica in replicas]
        publisher = await stack.enter_async_context(publisher_to(f"ipv4:{','.join(addresses)}"))
        users = [new_id("user") for _ in range(6)]
        runs = [Run(publisher, attestor, user_id=user, budget_s=20.0) for user in users]
        for run in runs:
            await run.think("one", "two")
        # The replica that serves the first user goes away; its users move to the other one.
        gone = addresses.index(rendezvous(users[0], addresses))
        await replicas[gone].server.drain()
        for run in runs:
            await run.think("three", "four")
            await run.finish()
        survivor = replicas[1 - gone]
        for user, run in zip(users, runs, strict=True):
            events = await stored(survivor.stub, make_context(user))
            assert seqs_of(events, run.run_id) == [1, 2, 3, 4, 5]


async def test_a_batch_not_acknowledged_in_time_is_resent_and_stored_once(
    bridge: StreamBridge, attestor: ContextAttestor, make_context: ContextFactory
) -> None:
    user = new_id("user")
    publisher = StreamPublisher(bridge.server.address, open_channel=Channels(), ack_timeout_s=0.1)
    try:
        run = Run(publisher, attestor, user_id=user)
        bridge.bus.hold(user)
        await run.think("slow to store")
        async with asyncio.timeout(WAIT_S):
            await bridge.bus.waiting[user].wait()
            while len(run.batches) < 2:  # the ack timed out and the batch went again
                await asyncio.sleep(0.01)
        bridge.bus.release(user)
        await run.finish()
    finally:
        await publisher.aclose()
    assert run.batches[:2] == [[1], [1]]
    assert seqs_of(await stored(bridge.stub, make_context(user)), run.run_id) == [1, 2]


async def test_batches_that_queue_up_together_travel_bundled_and_are_each_acknowledged(
    bridge: StreamBridge, make_context: ContextFactory
) -> None:
    contexts = [make_context(new_id("user")) for _ in range(40)]
    runs = [(ctx, new_id("run")) for ctx in contexts for _ in range(3)]
    async with publisher_to(bridge.server.address) as publisher:
        # One batch first: its stream's response headers say the bridge unpacks bundles.
        await publisher.publish(contexts[0], [run_event(contexts[0], run_id=new_id("run"), seq=1)])
        before = bridge.metric("runwire_bridge_publish_stream_messages_total")
        # 120 batches of 40 users, all sent in one turn of the event loop.
        results = await asyncio.gather(
            *(publisher.publish(ctx, [run_event(ctx, run_id=run_id, seq=1)]) for ctx, run_id in runs)
        )
        messages = bridge.metric("runwire_bridge_publish_stream_messages_total") - before
    assert [len(ids) for ids in results] == [1] * len(runs)
    assert all(ids[0] for ids in results), "every batch was stored, none fenced"
    assert 1 <= messages <= len(runs) / 10, f"{len(runs)} batches took {messages} messages"
    assert bridge.metric("runwire_bridge_publish_stream_batches_total", code="ok") == len(runs) + 1
    for ctx in contexts[1:]:
        events = await stored(bridge.stub, ctx)
        assert sorted(event.run_id for event in events) == sorted(r for c, r in runs if c is ctx)


class _BridgeBeforeBundles(bridge_pb2_grpc.BridgeServiceServicer):
    """A ``PublishStream`` that predates bundles: no announcement; records every message it reads."""

    def __init__(self) -> None:
        self.read: list[bridge_pb2.PublishStreamRequest] = []

    async def PublishStream(  # type: ignore[override]
        self,
        requests: AsyncIterator[bridge_pb2.PublishStreamRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[bridge_pb2.PublishStreamResponse]:
        async for request in requests:
            self.read.append(request)
            yield bridge_pb2.PublishStreamResponse(
                batch_id=request.batch_id, event_ids=[f"{request.batch_id}-0"], seqs=[1]
            )


async def test_a_bridge_that_does_not_announce_bundles_gets_every_batch_alone(
    make_context: ContextFactory,
) -> None:
    old = _BridgeBeforeBundles()
    server = grpc.aio.server()
    bridge_pb2_grpc.add_BridgeServiceServicer_to_server(old, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        ctx = make_context(new_id("user"))
        async with publisher_to(f"127.0.0.1:{port}") as publisher:
            await publisher.publish(ctx, [run_event(ctx, seq=1)])
            results = await asyncio.gather(
                *(publisher.publish(ctx, [run_event(ctx, seq=1)]) for _ in range(50))
            )
    finally:
        await server.stop(None)
    assert len(results) == 50 and all(len(ids) == 1 for ids in results)
    assert len(old.read) == 51
    assert not any(message.bundle for message in old.read)
