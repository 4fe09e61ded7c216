"""Every gRPC service validates the UserContext the same way, at its boundary."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from runwire.bridge.v1 import bridge_pb2, bridge_pb2_grpc
from runwire.common.v1 import context_pb2, event_pb2
from runwire.execution.v1 import execution_pb2, execution_pb2_grpc
from runwire.registry.v1 import registry_pb2, registry_pb2_grpc
from runwire_common.attestation import ContextAttestor
from runwire_common.context import PLACEHOLDER_IDS, PLACEHOLDER_PREFIXES
from runwire_common.ids import new_id
from tests.e2e.conftest import System

pytestmark = pytest.mark.e2e

PLACEHOLDERS = sorted(PLACEHOLDER_IDS) + [f"{p}1" for p in PLACEHOLDER_PREFIXES] + ["NULL", "Undefined", "  "]
Call = Callable[[context_pb2.UserContext], Awaitable[Any]]


@pytest.fixture
async def calls(system: System) -> AsyncIterator[dict[str, Call]]:
    channels = {
        kind: grpc.aio.insecure_channel(system.address(kind)) for kind in ("registry", "bridge", "execution")
    }
    registry = registry_pb2_grpc.RegistryServiceStub(channels["registry"])
    bridge = bridge_pb2_grpc.BridgeServiceStub(channels["bridge"])
    execution = execution_pb2_grpc.ExecutionServiceStub(channels["execution"])

    async def publish(ctx: context_pb2.UserContext) -> Any:
        event = event_pb2.RunEvent(
            seq=1,
            type="agent_thinking",
            run_id=new_id("run"),
            thread_id=new_id("thread"),
            user_id=ctx.user_id,
            agent="scripted",
            payload_json=json.dumps({"reasoning": "hi"}),
        )
        event.timestamp.GetCurrentTime()
        return await bridge.Publish(bridge_pb2.PublishRequest(user_context=ctx, events=[event]), timeout=5)

    yield {
        "registry.ListRuns": lambda ctx: registry.ListRuns(
            registry_pb2.ListRunsRequest(user_context=ctx), timeout=5
        ),
        "bridge.Publish": publish,
        "execution.ListAgents": lambda ctx: execution.ListAgents(
            execution_pb2.ListAgentsRequest(user_context=ctx), timeout=5
        ),
    }
    for channel in channels.values():
        await channel.close()


SERVICES = ("registry.ListRuns", "bridge.Publish", "execution.ListAgents")


def _ctx(attestor: ContextAttestor, **fields: Any) -> context_pb2.UserContext:
    fields.setdefault("user_id", new_id("user"))
    fields.setdefault("request_id", new_id("req"))
    return attestor.mint(context_pb2.UserContext(**fields), ttl_s=60)


@pytest.mark.parametrize("service", SERVICES)
async def test_a_valid_context_is_accepted_by_every_service(
    calls: dict[str, Call], attestor: ContextAttestor, service: str
) -> None:
    await calls[service](_ctx(attestor))


@pytest.mark.parametrize("service", SERVICES)
async def test_every_placeholder_id_is_rejected_by_every_service(
    calls: dict[str, Call], attestor: ContextAttestor, service: str
) -> None:
    for field in ("user_id", "request_id"):
        for value in PLACEHOLDERS:
            with pytest.raises(grpc.aio.AioRpcError) as rejected:
                await calls[service](_ctx(attestor, **{field: value}))
            assert rejected.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, value)
            assert field in (rejected.value.details() or ""), (field, value, rejected.value.details())


@pytest.mark.parametrize("service", SERVICES)
async def test_an_unattested_or_expired_context_is_unauthenticated_by_every_service(
    calls: dict[str, Call], attestor: ContextAttestor, service: str
) -> None:
    bare = context_pb2.UserContext(user_id=new_id("user"), request_id=new_id("req"))
    forged = _ctx(attestor)
    forged.user_id = new_id("user")
    expired = context_pb2.UserContext(user_id=new_id("user"))
    expired.expires_at.seconds = int(time.time()) - 120
    for ctx in (bare, forged, attestor.mint(expired)):
        with pytest.raises(grpc.aio.AioRpcError) as rejected:
            await calls[service](ctx)
        assert rejected.value.code() == grpc.StatusCode.UNAUTHENTICATED
