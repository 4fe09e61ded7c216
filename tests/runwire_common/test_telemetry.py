"""Tracing across hops, off by default, and the metrics endpoint."""

from __future__ import annotations

import urllib.request
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, Counter

from runwire.common.v1 import context_pb2
from runwire.registry.v1 import registry_pb2, registry_pb2_grpc
from runwire_common.channels import open_channel
from runwire_common.metrics import MetricsServer
from runwire_common.server import GrpcServer, ServiceBinding
from runwire_common.settings import ServerSettings
from runwire_common.telemetry import Telemetry, tracing_requested

REGISTRY = "runwire.registry.v1.RegistryService"


class Front(registry_pb2_grpc.RegistryServiceServicer):
    """Answers GetRun by asking the next hop, like a service calling another."""

    def __init__(self, stub: registry_pb2_grpc.RegistryServiceStub | None) -> None:
        self._stub = stub

    async def GetRun(self, request: Any, context: Any) -> registry_pb2.GetRunResponse:
        if self._stub is not None:
            return await self._stub.GetRun(request, timeout=5)
        reply = registry_pb2.GetRunResponse()
        reply.run.run_id = request.user_context.run_id
        return reply


def _binding(servicer: Front) -> ServiceBinding:
    return ServiceBinding(
        REGISTRY, lambda s: registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, s)
    )


@pytest.fixture
def settings(attestation_key_spec: str) -> ServerSettings:
    return ServerSettings(attestation_keys=attestation_key_spec)  # type: ignore[arg-type]


async def test_one_trace_spans_every_hop_with_user_and_run_attributes(settings: ServerSettings) -> None:
    exporter = InMemorySpanExporter()
    back_tel = Telemetry.with_exporter("back", exporter)
    front_tel = Telemetry.with_exporter("front", exporter)
    client_tel = Telemetry.with_exporter("client", exporter)
    back = GrpcServer(settings, [_binding(Front(None))], interceptors=back_tel.server_interceptors())
    await back.start()
    to_back = open_channel(
        back.address, service_names=(REGISTRY,), interceptors=front_tel.client_interceptors()
    )
    front = GrpcServer(
        settings,
        [_binding(Front(registry_pb2_grpc.RegistryServiceStub(to_back)))],
        interceptors=front_tel.server_interceptors(),
    )
    await front.start()
    try:
        async with open_channel(
            front.address, service_names=(REGISTRY,), interceptors=client_tel.client_interceptors()
        ) as channel:
            ctx = context_pb2.UserContext(user_id="user_trace_1234", run_id="run_trace_1234567890")
            with client_tel.span("ws run.get", user_id=ctx.user_id):
                reply = await registry_pb2_grpc.RegistryServiceStub(channel).GetRun(
                    registry_pb2.GetRunRequest(user_context=ctx), timeout=5
                )
        assert reply.run.run_id == "run_trace_1234567890"
    finally:
        await front.stop_now()
        await to_back.close()
        await back.stop_now()
    spans = exporter.get_finished_spans()
    assert len({s.context.trace_id for s in spans}) == 1
    services = {s.resource.attributes["service.name"] for s in spans}
    assert services == {"client", "front", "back"}
    servers = [s for s in spans if s.kind.name == "SERVER"]
    assert len(servers) == 2
    for span in servers:
        assert span.attributes is not None
        assert span.attributes["user_id"] == "user_trace_1234"
        assert span.attributes["run_id"] == "run_trace_1234567890"
    by_id = {s.context.span_id: s for s in spans}
    back_server = next(s for s in servers if s.resource.attributes["service.name"] == "back")
    chain = []
    node = back_server
    while node.parent is not None:
        node = by_id[node.parent.span_id]
        chain.append(node.resource.attributes["service.name"])
    assert chain[-1] == "client" and "front" in chain


def test_tracing_is_off_unless_configured() -> None:
    assert not tracing_requested({})
    assert tracing_requested({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})
    assert tracing_requested({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing_requested({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"})
    disabled = Telemetry.from_env("x", {})
    assert not disabled.enabled
    assert disabled.server_interceptors() == () and disabled.client_interceptors() == ()


def test_the_metrics_server_exposes_its_own_registry() -> None:
    registry = CollectorRegistry()
    Counter("runwire_test_events", "events", registry=registry).inc(3)
    server = MetricsServer(registry)
    port = server.start()
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        server.stop()
    assert "runwire_test_events_total 3.0" in body
    assert "python_gc" not in body  # the library's global registry is not involved
