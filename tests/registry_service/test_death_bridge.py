"""Death notices through the real bridge: the owner's stream gets ``agent_death``, nobody else's does."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
import pytest
from pydantic import SecretStr

from bridge_service.app import running_service as running_bridge
from bridge_service.settings import BridgeSettings
from registry_service.settings import RegistrySettings
from runwire.bridge.v1 import bridge_pb2, bridge_pb2_grpc
from runwire.common.v1 import context_pb2, event_pb2, run_pb2
from runwire_common.ids import new_id
from tests.registry_service.support import eventually, open_registry

S = run_pb2
ContextFactory = Callable[..., context_pb2.UserContext]
Stream = grpc.aio.UnaryStreamCall[bridge_pb2.SubscribeRequest, bridge_pb2.SubscribeResponse]
READ_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Bridge:
    address: str
    stub: bridge_pb2_grpc.BridgeServiceAsyncStub


@pytest.fixture
async def bridge(attestation_key_spec: str) -> AsyncIterator[Bridge]:
    """The real bridge service (memory backend) on loopback."""
    settings = BridgeSettings(attestation_keys=SecretStr(attestation_key_spec), port=0, grace_period_s=1)
    async with running_bridge(settings) as server, grpc.aio.insecure_channel(server.address) as channel:
        yield Bridge(address=server.address, stub=bridge_pb2_grpc.BridgeServiceStub(channel))


async def subscribed(stub: bridge_pb2_grpc.BridgeServiceAsyncStub, ctx: context_pb2.UserContext) -> Stream:
    """A live-only subscription, returned once the bridge confirmed it."""
    call = stub.Subscribe(bridge_pb2.SubscribeRequest(user_context=ctx))
    async with asyncio.timeout(READ_TIMEOUT_S):
        first = await call.read()
    assert isinstance(first, bridge_pb2.SubscribeResponse) and first.HasField("replay_complete")
    return call


async def next_event(call: Stream, *, timeout_s: float = READ_TIMEOUT_S) -> event_pb2.RunEvent:
    async with asyncio.timeout(timeout_s):
        while True:
            item = await call.read()
            assert isinstance(item, bridge_pb2.SubscribeResponse), f"stream ended: {item!r}"
            if item.HasField("event"):
                return item.event


async def test_only_the_owner_receives_the_agent_death_of_their_run(
    bridge: Bridge,
    registry_settings: RegistrySettings,
    make_context: ContextFactory,
) -> None:
    owner, stranger = new_id("user"), new_id("user")
    owner_stream = await subscribed(bridge.stub, make_context(owner))
    stranger_stream = await subscribed(bridge.stub, make_context(stranger))
    settings = registry_settings.model_copy(
        update={
            "heartbeat_timeout_s": 0.5,
            "death_sweep_interval_s": 0.1,
            "bridge_target": bridge.address,
        }
    )
    try:
        async with open_registry(settings, make_context) as registry:
            run = await registry.run_in(owner, S.RUN_STATE_RUNNING)

            event = await next_event(owner_stream)

            async def is_dead() -> bool:
                return (await registry.get(run)).state == S.RUN_STATE_DEAD

            await eventually(is_dead)
            with pytest.raises(TimeoutError):
                await next_event(stranger_stream, timeout_s=1.0)
            with pytest.raises(TimeoutError):  # told once, even after more sweeps
                await next_event(owner_stream, timeout_s=0.5)
    finally:
        owner_stream.cancel()
        stranger_stream.cancel()

    assert (event.type, event.run_id, event.user_id, event.thread_id) == (
        "agent_death",
        run.run_id,
        owner,
        run.thread_id,
    )
    assert event.seq >= 1 and event.event_id  # assigned by the bridge
    payload = json.loads(event.payload_json)
    assert (payload["status"], payload["death_cause"], payload["recovery_action"]) == (
        "dead",
        "no_heartbeat",
        "retry",
    )
    assert payload["message"]
