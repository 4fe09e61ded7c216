"""PublishStream over a real server: acknowledgements, order, refusals, fencing, draining."""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest

from bridge_service.publish_stream import VerifiedContexts
from runwire.bridge.v1 import bridge_pb2
from runwire.common.v1 import context_pb2, event_pb2
from runwire_common.attestation import ContextAttestor, generate_key_spec
from tests.bridge_service.harness import ContextFactory, SettingsFactory, event, retained
from tests.bridge_service.stream_harness import (
    READ_TIMEOUT_S,
    PublishCall,
    StreamBridge,
    open_stream_bridge,
    read_ack,
    read_acks,
)

OK = 0
RUN = "run_0123456789abcdef0123"


@pytest.fixture
async def sbridge(make_settings: SettingsFactory) -> StreamBridge:  # type: ignore[misc]
    async with open_stream_bridge(make_settings()) as running:
        yield running


def batch(
    batch_id: int, ctx: context_pb2.UserContext, *events: event_pb2.RunEvent
) -> bridge_pb2.PublishStreamRequest:
    return bridge_pb2.PublishStreamRequest(user_context=ctx, batch_id=batch_id, events=events)


async def test_each_batch_is_acknowledged_by_its_batch_id_with_ids_and_seqs(
    sbridge: StreamBridge, make_context: ContextFactory
) -> None:
    ctx = make_context()
    call: PublishCall = sbridge.stub.PublishStream()
    await call.write(batch(7, ctx, event(ctx, seq=1), event(ctx, seq=2)))
    await call.write(batch(8, ctx, event(ctx, seq=0)))
    acks = await read_acks(call, 2)

    assert set(acks) == {7, 8}
    assert [a.code for a in acks.values()] == [OK, OK]
    assert list(acks[7].seqs) == [1, 2]
    assert list(acks[8].seqs) == [3]
    stored = await retained(sbridge.bus.inner, ctx.user_id)
    assert stored == [*acks[7].event_ids, *acks[8].event_ids]
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.OK


async def test_batches_of_each_user_are_stored_in_stream_order_with_many_users_interleaved(
    sbridge: StreamBridge, make_context: ContextFactory
) -> None:
    users = [make_context() for _ in range(20)]
    rounds = 15
    rng = random.Random(7)
    owners: list[int] = []  # owners[batch_id - 1]: the user of that batch
    for _ in range(rounds):
        owners += rng.sample(range(len(users)), len(users))  # every user once per round, shuffled
    call: PublishCall = sbridge.stub.PublishStream()
    for batch_id, owner in enumerate(owners, start=1):
        ctx = users[owner]
        # seq 0: the bridge assigns the run's next seq, so only stream order makes them 1..n.
        await call.write(batch(batch_id, ctx, event(ctx, seq=0, payload={"batch": batch_id})))
    acks = await read_acks(call, len(owners))
    await call.done_writing()

    assert all(ack.code == OK for ack in acks.values())
    for u, ctx in enumerate(users):
        mine = [acks[b] for b, owner in enumerate(owners, start=1) if owner == u]
        assert [ack.seqs[0] for ack in mine] == list(range(1, rounds + 1))
        assert await retained(sbridge.bus.inner, ctx.user_id) == [ack.event_ids[0] for ack in mine]


async def test_a_slow_user_does_not_hold_up_another_users_batches(
    sbridge: StreamBridge, make_context: ContextFactory
) -> None:
    slow, fast = make_context(), make_context()
    sbridge.bus.hold(slow.user_id)
    call: PublishCall = sbridge.stub.PublishStream()
    await call.write(batch(1, slow, event(slow, seq=1)))
    await call.write(batch(2, slow, event(slow, seq=2)))
    async with asyncio.timeout(READ_TIMEOUT_S):
        await sbridge.bus.waiting[slow.user_id].wait()
    await call.write(batch(3, fast, event(fast, seq=1)))

    first = await read_ack(call)
    assert (first.batch_id, first.code) == (3, OK)
    assert sbridge.bus.entered[slow.user_id] == 1  # batch 2 waits behind batch 1, in stream order
    sbridge.bus.release(slow.user_id)
    acks = await read_acks(call, 2)
    assert [list(acks[b].seqs) for b in (1, 2)] == [[1], [2]]
    await call.done_writing()


async def test_a_refused_batch_is_answered_and_the_stream_goes_on(
    sbridge: StreamBridge, make_context: ContextFactory
) -> None:
    alice, bob = make_context(), make_context()
    call: PublishCall = sbridge.stub.PublishStream()
    await call.write(batch(1, alice, event(bob, seq=1)))  # bob's event under alice's identity
    await call.write(batch(2, alice))  # no events
    await call.write(batch(3, alice, event(alice, seq=1, type="not_a_type")))
    await call.write(batch(4, alice, event(alice, seq=1)))
    acks = await read_acks(call, 4)

    invalid = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert [acks[b].code for b in (1, 2, 3)] == [invalid] * 3
    assert "user_id" in acks[1].message and "type" in acks[3].message
    assert not acks[1].event_ids and not acks[2].event_ids
    assert acks[4].code == OK and len(acks[4].event_ids) == 1
    assert await retained(sbridge.bus.inner, bob.user_id) == []
    assert sbridge.metric("runwire_bridge_publish_stream_batches_total", code="invalid_argument") == 3
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.OK


async def test_a_resent_batch_is_stored_once(sbridge: StreamBridge, make_context: ContextFactory) -> None:
    ctx = make_context()
    sent = batch(1, ctx, event(ctx, seq=1), event(ctx, seq=2, type="agent_completed"))
    first: PublishCall = sbridge.stub.PublishStream()
    await first.write(sent)
    stored = await read_ack(first)
    first.cancel()  # the stream breaks; the sender resends on a new one

    second: PublishCall = sbridge.stub.PublishStream()
    await second.write(sent)
    await second.write(batch(2, ctx, event(ctx, seq=3)))  # after the terminal event: fenced
    acks = await read_acks(second, 2)
    await second.done_writing()

    assert stored.code == OK and len([i for i in stored.event_ids if i]) == 2
    assert [acks[1].code, acks[2].code] == [OK, OK]
    assert list(acks[1].event_ids) == ["", ""] and list(acks[1].seqs) == [0, 0]
    assert list(acks[2].event_ids) == [""]
    assert await retained(sbridge.bus.inner, ctx.user_id) == list(stored.event_ids)
    assert sbridge.metric("runwire_bridge_events_published_total", outcome="stored") == 2
    assert sbridge.metric("runwire_bridge_events_published_total", outcome="ignored") == 3


@pytest.mark.parametrize("problem", ["unattested", "forged", "expired", "foreign_key"])
async def test_a_batch_without_a_valid_attestation_is_refused_unauthenticated(
    sbridge: StreamBridge, make_context: ContextFactory, problem: str
) -> None:
    ctx = make_context()
    if problem == "unattested":
        ctx.ClearField("attestation")
    elif problem == "forged":
        ctx.user_id = "user_someone_else_entirely"
    elif problem == "expired":
        ctx = make_context(ttl_s=-3600)
    else:
        ctx = ContextAttestor.from_spec(generate_key_spec("test")).mint(ctx)
    call: PublishCall = sbridge.stub.PublishStream()
    await call.write(batch(5, ctx, event(ctx, seq=1)))
    ack = await read_ack(call)
    await call.done_writing()

    assert (ack.batch_id, ack.code) == (5, grpc.StatusCode.UNAUTHENTICATED.value[0])
    assert await retained(sbridge.bus.inner, ctx.user_id) == []
    assert await call.code() == grpc.StatusCode.OK


async def test_draining_acknowledges_the_batches_in_flight_then_ends_the_stream_unavailable(
    sbridge: StreamBridge, make_context: ContextFactory
) -> None:
    ctx = make_context()
    sbridge.bus.hold(ctx.user_id)
    call: PublishCall = sbridge.stub.PublishStream()
    await call.write(batch(1, ctx, event(ctx, seq=1)))
    async with asyncio.timeout(READ_TIMEOUT_S):
        await sbridge.bus.waiting[ctx.user_id].wait()

    drained = asyncio.create_task(sbridge.drain())
    await asyncio.sleep(0)  # the drain hook runs before the held batch is released
    sbridge.bus.release(ctx.user_id)
    ack = await read_ack(call)
    async with asyncio.timeout(READ_TIMEOUT_S):
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await call.read()
        await drained
    assert (ack.batch_id, ack.code) == (1, OK)
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await retained(sbridge.bus.inner, ctx.user_id) == list(ack.event_ids)


class CountingAttestor(ContextAttestor):
    verified = 0

    def verify(self, ctx: context_pb2.UserContext) -> None:
        self.verified += 1
        super().verify(ctx)


def test_a_verified_context_is_remembered_until_it_expires_and_only_byte_for_byte(
    attestation_key_spec: str, make_context: ContextFactory
) -> None:
    now = [1_000.0]
    attestor = CountingAttestor.from_spec(attestation_key_spec)
    assert isinstance(attestor, CountingAttestor)
    contexts = VerifiedContexts(attestor, clock=lambda: now[0])
    ctx = make_context()
    now[0] = ctx.expires_at.seconds - 10.0

    for _ in range(3):
        contexts.validate(ctx)
    assert attestor.verified == 1

    other = context_pb2.UserContext()
    other.CopyFrom(ctx)
    other.request_id = "req_another_request_id_0001"
    contexts.validate(other)  # different bytes: verified on its own
    assert attestor.verified == 2

    now[0] = ctx.expires_at.seconds + 1.0  # past expires_at (the attestor still allows its skew)
    contexts.validate(ctx)
    assert attestor.verified == 3


def test_a_refused_context_is_not_remembered(attestation_key_spec: str, make_context: ContextFactory) -> None:
    attestor = CountingAttestor.from_spec(attestation_key_spec)
    assert isinstance(attestor, CountingAttestor)
    contexts = VerifiedContexts(attestor)
    forged = make_context()
    forged.user_id = "user_someone_else_entirely"
    for _ in range(2):
        with pytest.raises(Exception, match="attestation"):
            contexts.validate(forged)
    assert attestor.verified == 2
