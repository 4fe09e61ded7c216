"""Every gRPC service validates the UserContext the same way, at its boundary."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from runwire.bridge.v1 import bridge_pb2, bridge_pb2_grpc
from runwire.common.v1 import context_pb2, event_pb2, run_pb2
from runwire.execution.v1 import execution_pb2, execution_pb2_grpc
from runwire.registry.v1 import registry_pb2, registry_pb2_grpc
from runwire_common.attestation import ContextAttestor, generate_key_spec
from runwire_common.context import PLACEHOLDER_IDS, PLACEHOLDER_PREFIXES
from runwire_common.ids import new_id
from tests.e2e.conftest import System

pytestmark = pytest.mark.e2e

PLACEHOLDERS = sorted(PLACEHOLDER_IDS) + [f"{p}1" for p in PLACEHOLDER_PREFIXES] + ["NULL", "Undefined", "  "]
Call = Callable[[context_pb2.UserContext], Awaitable[Any]]


def _event(ctx: context_pb2.UserContext) -> event_pb2.RunEvent:
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
    return event


@pytest.fixture
async def calls(system: System) -> AsyncIterator[dict[str, Call]]:
    """Every RPC of every service, as ``call(ctx)`` with an otherwise valid request."""
    channels = {
        kind: grpc.aio.insecure_channel(system.address(kind)) for kind in ("registry", "bridge", "execution")
    }
    registry = registry_pb2_grpc.RegistryServiceStub(channels["registry"])
    bridge = bridge_pb2_grpc.BridgeServiceStub(channels["bridge"])
    execution = execution_pb2_grpc.ExecutionServiceStub(channels["execution"])

    async def subscribe(ctx: context_pb2.UserContext) -> Any:
        stream = bridge.Subscribe(bridge_pb2.SubscribeRequest(user_context=ctx), timeout=5)
        try:
            return await stream.read()
        finally:
            stream.cancel()

    def scoped(ctx: context_pb2.UserContext) -> context_pb2.UserContext:
        out = context_pb2.UserContext()
        out.CopyFrom(ctx)
        out.thread_id = out.thread_id or new_id("thread")
        out.run_id = out.run_id or new_id("run")
        return out

    state = run_pb2.RUN_STATE_CANCELLED
    yield {
        "registry.CreateRun": lambda ctx: registry.CreateRun(
            registry_pb2.CreateRunRequest(user_context=scoped(ctx), agent="scripted", input_json="{}"),
            timeout=5,
        ),
        "registry.TransitionRun": lambda ctx: registry.TransitionRun(
            registry_pb2.TransitionRunRequest(user_context=scoped(ctx), to_state=state), timeout=5
        ),
        "registry.Heartbeat": lambda ctx: registry.Heartbeat(
            registry_pb2.HeartbeatRequest(user_context=scoped(ctx), executor_id="executor-test"), timeout=5
        ),
        "registry.GetRun": lambda ctx: registry.GetRun(
            registry_pb2.GetRunRequest(user_context=scoped(ctx)), timeout=5
        ),
        "registry.ListRuns": lambda ctx: registry.ListRuns(
            registry_pb2.ListRunsRequest(user_context=ctx), timeout=5
        ),
        "bridge.Publish": lambda ctx: bridge.Publish(
            bridge_pb2.PublishRequest(user_context=ctx, events=[_event(ctx)]), timeout=5
        ),
        "bridge.Subscribe": subscribe,
        "execution.StartRun": lambda ctx: execution.StartRun(
            execution_pb2.StartRunRequest(
                user_context=scoped(ctx), agent="scripted", input_json='{"steps": [], "result": "ok"}'
            ),
            timeout=5,
        ),
        "execution.CancelRun": lambda ctx: execution.CancelRun(
            execution_pb2.CancelRunRequest(user_context=scoped(ctx)), timeout=5
        ),
        "execution.ListAgents": lambda ctx: execution.ListAgents(
            execution_pb2.ListAgentsRequest(user_context=ctx), timeout=5
        ),
    }
    for channel in channels.values():
        await channel.close()


ALL_RPCS = (
    "registry.CreateRun",
    "registry.TransitionRun",
    "registry.Heartbeat",
    "registry.GetRun",
    "registry.ListRuns",
    "bridge.Publish",
    "bridge.Subscribe",
    "execution.StartRun",
    "execution.CancelRun",
    "execution.ListAgents",
)
SERVICES = ("registry.ListRuns", "bridge.Publish", "execution.ListAgents")  # one RPC that needs only user_id


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


def _forgeries(attestor: ContextAttestor) -> dict[str, context_pb2.UserContext]:
    missing = context_pb2.UserContext(user_id=new_id("user"), request_id=new_id("req"))
    altered = _ctx(attestor)
    altered.user_id = new_id("user")
    expired = context_pb2.UserContext(user_id=new_id("user"), request_id=new_id("req"))
    expired.expires_at.seconds = int(time.time()) - 120
    wrong_key = ContextAttestor.from_spec(generate_key_spec("test")).mint(
        context_pb2.UserContext(user_id=new_id("user"), request_id=new_id("req")), ttl_s=60
    )
    unknown_key_id = _ctx(attestor)
    unknown_key_id.attestation.key_id = "retired"
    return {
        "missing attestation": missing,
        "altered user_id": altered,
        "expired": attestor.mint(expired),
        "wrong key": wrong_key,
        "unknown key id": unknown_key_id,
    }


@pytest.mark.parametrize("rpc", ALL_RPCS)
async def test_a_forged_context_is_unauthenticated_by_every_rpc(
    calls: dict[str, Call], attestor: ContextAttestor, rpc: str
) -> None:
    for name, ctx in _forgeries(attestor).items():
        with pytest.raises(grpc.aio.AioRpcError) as rejected:
            await calls[rpc](ctx)
        assert rejected.value.code() == grpc.StatusCode.UNAUTHENTICATED, (name, rejected.value.details())


async def test_a_valid_context_of_another_user_cannot_see_or_touch_a_run(
    system: System, attestor: ContextAttestor
) -> None:
    async with (
        grpc.aio.insecure_channel(system.address("execution")) as ex_channel,
        grpc.aio.insecure_channel(system.address("registry")) as reg_channel,
    ):
        execution = execution_pb2_grpc.ExecutionServiceStub(ex_channel)
        registry = registry_pb2_grpc.RegistryServiceStub(reg_channel)
        alice = _ctx(attestor, thread_id=new_id("thread"))
        started = await execution.StartRun(
            execution_pb2.StartRunRequest(
                user_context=alice,
                agent="scripted",
                input_json='{"steps": [{"sleep_ms": 3000}], "result": "x"}',
            ),
            timeout=5,
        )
        bob = _ctx(attestor, run_id=started.run.run_id, thread_id=started.run.thread_id)
        attempts = {
            "GetRun": registry.GetRun(registry_pb2.GetRunRequest(user_context=bob), timeout=5),
            "TransitionRun": registry.TransitionRun(
                registry_pb2.TransitionRunRequest(user_context=bob, to_state=run_pb2.RUN_STATE_FAILED),
                timeout=5,
            ),
            "Heartbeat": registry.Heartbeat(registry_pb2.HeartbeatRequest(user_context=bob), timeout=5),
            "CancelRun": execution.CancelRun(execution_pb2.CancelRunRequest(user_context=bob), timeout=5),
        }
        for name, attempt in attempts.items():
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await attempt
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND, name
        listed = await registry.ListRuns(registry_pb2.ListRunsRequest(user_context=bob), timeout=5)
        assert list(listed.runs) == []
        alice_run = _ctx(attestor, user_id=alice.user_id, run_id=started.run.run_id)
        still = await registry.GetRun(registry_pb2.GetRunRequest(user_context=alice_run), timeout=5)
        assert still.run.state not in (run_pb2.RUN_STATE_FAILED, run_pb2.RUN_STATE_CANCELLED)
        await execution.CancelRun(execution_pb2.CancelRunRequest(user_context=alice_run), timeout=5)
