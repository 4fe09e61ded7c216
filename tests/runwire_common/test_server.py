"""The shared server lifecycle: health, drain gate, in-flight calls finishing."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from runwire_common.server import GrpcServer, ServiceBinding
from runwire_common.settings import ServerSettings

SERVICE = "runwire.test.Slow"


def _binding(started: asyncio.Event) -> ServiceBinding:
    async def wait(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        started.set()
        await asyncio.sleep(float(request.decode()))
        return b"done"

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Wait": grpc.unary_unary_rpc_method_handler(wait)}
    )
    return ServiceBinding(SERVICE, lambda server: server.add_generic_rpc_handlers((handler,)))


@pytest.fixture
def settings(attestation_key_spec: str) -> ServerSettings:
    return ServerSettings(attestation_keys=attestation_key_spec, grace_period_s=5)  # type: ignore[arg-type]


async def test_draining_refuses_new_calls_while_in_flight_calls_finish(settings: ServerSettings) -> None:
    started = asyncio.Event()
    server = GrpcServer(settings, [_binding(started)])
    await server.start()
    async with grpc.aio.insecure_channel(server.address) as channel:
        wait = channel.unary_unary(f"/{SERVICE}/Wait")
        health = health_pb2_grpc.HealthStub(channel)

        async def slow_call() -> bytes:
            reply: bytes = await wait(b"0.8", timeout=10)
            return reply

        in_flight = asyncio.create_task(slow_call())
        await started.wait()
        hook_ran = asyncio.Event()

        async def on_drain() -> None:
            hook_ran.set()
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await wait(b"0", timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            status = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
            assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING

        await server.drain(on_drain)
        assert hook_ran.is_set()
        assert await in_flight == b"done"


async def test_a_serving_server_reports_serving_and_answers(settings: ServerSettings) -> None:
    server = GrpcServer(settings, [_binding(asyncio.Event())])
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            status = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=SERVICE), timeout=5
            )
            assert status.status == health_pb2.HealthCheckResponse.SERVING
            assert await channel.unary_unary(f"/{SERVICE}/Wait")(b"0", timeout=5) == b"done"
    finally:
        await server.stop_now()


async def test_a_draining_server_refuses_a_bidirectional_stream_before_its_first_message(
    settings: ServerSettings,
) -> None:
    async def echo(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        async for request in requests:
            yield request

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Echo": grpc.stream_stream_rpc_method_handler(echo)}
    )
    binding = ServiceBinding(SERVICE, lambda server: server.add_generic_rpc_handlers((handler,)))
    server = GrpcServer(settings, [binding])
    await server.start()
    async with grpc.aio.insecure_channel(server.address) as channel:

        async def on_drain() -> None:
            # The client sends nothing: the refusal must not wait for a first message.
            call = channel.stream_stream(f"/{SERVICE}/Echo")(timeout=3)
            assert await call.code() == grpc.StatusCode.UNAVAILABLE

        await server.drain(on_drain)


async def _listed_services(address: str) -> set[str] | grpc.StatusCode:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        try:
            async for reply in call:
                return {service.name for service in reply.list_services_response.service}
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    raise AssertionError("no reply")


@pytest.mark.parametrize("enabled", [False, True])
async def test_reflection_is_served_only_when_the_setting_turns_it_on(
    settings: ServerSettings, enabled: bool
) -> None:
    server = GrpcServer(settings.model_copy(update={"reflection": enabled}), [_binding(asyncio.Event())])
    await server.start()
    try:
        listed = await _listed_services(server.address)
    finally:
        await server.stop_now()
    if enabled:
        assert listed == {SERVICE, "grpc.health.v1.Health", reflection.SERVICE_NAME}
    else:
        assert listed == grpc.StatusCode.UNIMPLEMENTED
