"""Generated request sequences on the bridge's long-lived streams, Fabric and PublishStream.

Each example opens one stream and sends a short sequence of generated
messages (any field values, contexts unattested, forged, expired or attested,
subscription ids that collide on purpose), then a well-formed witness request.
Whatever came before, the stream keeps serving: every refusal is a clear
client-side status on the item or acknowledgement it concerns, the witness is
served, no subscription ever carries another user's event, and once the stream
is closed nothing of it is left at the bridge. Only a bridge runs here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from runwire.bridge.v1 import bridge_pb2
from runwire.common.v1 import context_pb2
from runwire_common.attestation import ContextAttestor
from runwire_common.ids import new_id
from tests.bridge_service.harness import event as run_event
from tests.bridge_service.harness import settings_for
from tests.bridge_service.stream_harness import FabricClient, StreamBridge, open_stream_bridge
from tests.hostile.strategies import carried, fabric_requests, plausible_id, publish_stream_requests
from tests.hostile.test_rpc_fields import CLIENT_SIDE_CODES, HINTS, ContextPlan, assert_clear_status

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning"),
]

# One stream per example: far fewer examples than the CI profile's 2,000 keep this file quick.
STREAMS = settings(
    max_examples=120,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    deadline=None,
)
# Besides the client-side codes of the unary RPCs: a subscription ended by the drain.
STREAM_ITEM_CODES = frozenset({*CLIENT_SIDE_CODES, grpc.StatusCode.UNAVAILABLE})
CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
WITNESS_ID = 2**64 - 1  # the generated ids collide with each other, never with this one
SETTLE_S = 5.0
# No registry runs here, so no known runs: plausible ids instead (see test_rpc_fields).
STREAM_HINTS = {**HINTS, "thread_id": plausible_id("thread"), "run_id": plausible_id("run")}
# Two users recur, so their subscriptions meet each other and the events published for them.
RECURRING_USERS = (f"user_{'b2' * 16}", f"user_{'c3' * 16}")
USER_IDS = st.one_of(st.sampled_from(RECURRING_USERS), plausible_id("user"))
CONTEXT_PLANS = st.builds(
    ContextPlan,
    mode=st.sampled_from(["plausible"] * 6 + ["attested", "raw"]),
    ttl_s=st.sampled_from([600.0, 600.0, 600.0, -3600.0, 3e9]),
    user_id=USER_IDS,
    tenant_id=st.one_of(st.just(""), plausible_id("tenant")),
    thread_id=st.one_of(plausible_id("thread"), st.just("")),
    run_id=st.one_of(plausible_id("run"), st.just("")),
    request_id=plausible_id("req"),
    connection_id=st.one_of(st.just(""), plausible_id("conn")),
    operation_depth=st.integers(0, 10),
)
# Built once: the descriptor walk is the expensive part.
FABRIC_REQUESTS = fabric_requests(STREAM_HINTS)
PUBLISH_STREAM_REQUESTS = publish_stream_requests(STREAM_HINTS)


@st.composite
def fabric_sequence_item(draw: st.DrawFn, attestor: ContextAttestor) -> bridge_pb2.FabricRequest:
    """A generated request whose context is left raw, attested as generated, or made plausible."""
    request = draw(FABRIC_REQUESTS)
    assert isinstance(request, bridge_pb2.FabricRequest)
    request.user_context.CopyFrom(draw(CONTEXT_PLANS).apply(request.user_context, attestor))
    if request.HasField("add") and draw(st.booleans()):  # often in range, so the add gets served
        request.add.max_batch %= 300
        request.add.initial_credit %= 1000
        request.add.after = ""
    return request


@st.composite
def batches(draw: st.DrawFn, attestor: ContextAttestor) -> bridge_pb2.PublishStreamRequest:
    """A generated batch; often its events are owned by its context, so it gets past the owner check."""
    request = draw(PUBLISH_STREAM_REQUESTS)
    assert isinstance(request, bridge_pb2.PublishStreamRequest)
    request.user_context.CopyFrom(draw(CONTEXT_PLANS).apply(request.user_context, attestor))
    if draw(st.booleans()):
        for generated in request.events:
            generated.user_id = request.user_context.user_id
    return request


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bridge(attestation_key_spec: str) -> AsyncIterator[StreamBridge]:
    settings_ = settings_for(attestation_key_spec, grace_period_s=2, subscriber_queue=500)
    async with open_stream_bridge(settings_) as running:
        yield running


def witness(attestor: ContextAttestor) -> context_pb2.UserContext:
    return attestor.mint(context_pb2.UserContext(user_id=new_id("user"), request_id=new_id("req")), ttl_s=600)


async def settled(bridge: StreamBridge, metric: str) -> None:
    """Wait until the gauge ``metric`` is back to 0 (the stream's state is gone)."""
    async with asyncio.timeout(SETTLE_S):
        while bridge.metric(metric):
            await asyncio.sleep(0.01)


@STREAMS
@given(data=st.data())
async def test_fabric_serves_on_after_any_sequence_of_generated_requests(
    bridge: StreamBridge, attestor: ContextAttestor, data: st.DataObject
) -> None:
    sent = data.draw(st.lists(fabric_sequence_item(attestor), min_size=1, max_size=10), label="requests")
    fabric = FabricClient(bridge.stub)
    owners: dict[int, set[str]] = {}  # the users a subscription id was added for
    try:
        for request in sent:
            assert isinstance(request, bridge_pb2.FabricRequest)
            if request.WhichOneof("op") == "add":
                owners.setdefault(request.add.subscription_id, set()).add(request.user_context.user_id)
            await fabric.send(request)
        for user_id in RECURRING_USERS:  # events for whichever subscriptions of theirs were accepted
            owner = attestor.mint(context_pb2.UserContext(user_id=user_id), ttl_s=600)
            publish = bridge_pb2.PublishRequest(user_context=owner, events=[run_event(owner, seq=0)])
            await bridge.stub.Publish(publish, timeout=SETTLE_S)
        ctx = witness(attestor)
        await fabric.add(ctx, WITNESS_ID)
        await fabric.wait_for_replay(WITNESS_ID)
    finally:
        await fabric.close()
    for subscription_id, items in fabric.items.items():
        for item in items:
            if item.HasField("ended"):
                code = CODES_BY_NUMBER[item.ended.code]
                event(code.name)
                assert code in STREAM_ITEM_CODES, (
                    f"{subscription_id} ended {code.name}: {item.ended.message!r}"
                )
                assert_clear_status("Fabric", item, code, item.ended.message)
            if item.HasField("replay_complete") and subscription_id != WITNESS_ID:
                event("a generated add was served")
            for received in item.events.events:
                event("events delivered")
                assert received.user_id in owners.get(subscription_id, ()), "another user's event"
    await settled(bridge, "runwire_bridge_fabric_subscriptions")
    await settled(bridge, "runwire_bridge_fabric_streams")


@STREAMS
@given(data=st.data())
async def test_publish_stream_acknowledges_every_generated_batch_and_serves_on(
    bridge: StreamBridge, attestor: ContextAttestor, data: st.DataObject
) -> None:
    sent = data.draw(st.lists(batches(attestor), min_size=1, max_size=8), label="batches")
    ctx = witness(attestor)
    witness_batch = bridge_pb2.PublishStreamRequest(
        user_context=ctx,
        batch_id=WITNESS_ID,
        events=[run_event(ctx, run_id=new_id("run"), seq=1)],
    )
    # Generated messages may carry batches in their bundle: each is acknowledged on its own.
    expected = [batch for request in [*sent, witness_batch] for batch in carried(request)]
    call = bridge.stub.PublishStream()
    acks: list[bridge_pb2.PublishStreamResponse] = []
    try:
        for request in [*sent, witness_batch]:
            await call.write(request)
        async with asyncio.timeout(SETTLE_S):
            while len(acks) < len(expected):
                ack = await call.read()
                assert isinstance(ack, bridge_pb2.PublishStreamResponse), f"stream ended: {ack!r}"
                assert not ack.bundle, "acknowledgements are bundled only for a sender that announced it"
                acks.append(ack)
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK
    finally:
        call.cancel()
    assert sorted(a.batch_id for a in acks) == sorted(b.batch_id for b in expected)  # type: ignore[attr-defined]
    for ack in acks:
        code = CODES_BY_NUMBER[ack.code]
        event(code.name)
        assert_clear_status("PublishStream", ack, code, ack.message)
        if code is grpc.StatusCode.OK:
            assert len(ack.event_ids) == len(ack.seqs) > 0
    [witnessed] = [a for a in acks if a.batch_id == WITNESS_ID and a.code == 0 and a.event_ids[0]]
    assert witnessed.seqs[0] == 1
    await settled(bridge, "runwire_bridge_publish_streams")


async def status_after_garbage(channel: grpc.aio.Channel, path: str, garbage: bytes) -> grpc.StatusCode:
    """The status the stream ``path`` ends with when ``garbage`` is its one request (a clear one)."""
    call = channel.stream_stream(path, request_serializer=bytes, response_deserializer=bytes)()
    try:
        await call.write(garbage)
        await call.done_writing()
        async with asyncio.timeout(SETTLE_S):
            async for _ in call:
                pass  # bytes that happen to parse: answered (an ended item, an ack, a write's answer)
        return await call.code()
    except grpc.aio.AioRpcError as exc:
        assert_clear_status(path, garbage, exc.code(), exc.details())  # type: ignore[arg-type]
        return exc.code()
    finally:
        call.cancel()


@pytest.mark.parametrize("method", ["Fabric", "PublishStream"])
@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(garbage=st.binary(min_size=1, max_size=64))
async def test_bytes_that_are_no_request_end_the_stream_with_a_clear_status(
    bridge: StreamBridge, method: str, garbage: bytes
) -> None:
    code = await status_after_garbage(bridge.channel, f"/runwire.bridge.v1.BridgeService/{method}", garbage)
    event(code.name)
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT)
    await settled(bridge, "runwire_bridge_fabric_streams")
    await settled(bridge, "runwire_bridge_publish_streams")
