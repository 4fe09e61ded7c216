"""The composition root of the execution service.

``running_service(settings)`` opens the long-lived resources in order (a
channel to the registry; the bridge publisher, which holds one publish stream
per bridge replica; the ``llm`` agent's model client when its endpoint is
configured), builds the agent catalog, the run supervisor and the
servicer, starts the gRPC server and yields it. On exit (SIGTERM in
``__main__``) it drains within ``grace_period_s``: new calls are refused with
``UNAVAILABLE`` (the server's drain gate), live runs may finish until
``drain_stop_s`` before the grace period ends, then every run still going is
stopped and ended ``dead`` (``executor_lost``) with its ``agent_death``
event, everything is flushed, and the channels close.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import grpc

from execution_service.catalog import AgentCatalog
from execution_service.llm.wiring import bind_llm, open_client
from execution_service.metrics import ExecutionCollector
from execution_service.peers import BRIDGE_SERVICE, REGISTRY_SERVICE, GrpcRegistry
from execution_service.publisher import StreamPublisher
from execution_service.registry_writes import RunWrites
from execution_service.servicer import ExecutionServicer
from execution_service.settings import ExecutionSettings
from execution_service.supervisor import RunSupervisor
from runwire.execution.v1 import execution_pb2, execution_pb2_grpc
from runwire_common.channels import open_channel
from runwire_common.observability import open_observability
from runwire_common.server import GrpcServer, ServiceBinding
from runwire_common.telemetry import Telemetry

EXECUTION_SERVICE = execution_pb2.DESCRIPTOR.services_by_name["ExecutionService"].full_name
# Kept free at the very end of the grace period, for the server to stop.
DRAIN_MARGIN_S = 0.2

log = logging.getLogger("runwire.execution")


@asynccontextmanager
async def running_service(
    settings: ExecutionSettings,
    *,
    catalog: AgentCatalog | None = None,
    telemetry: Telemetry | None = None,
) -> AsyncIterator[GrpcServer]:
    """Run the execution service until the context exits; yields the started server.

    ``telemetry`` replaces the tracing configured by ``OTEL_*`` (tests pass one).

    ``catalog`` replaces the discovered one (built-ins plus entry points).
    """
    attestor = settings.attestor()
    agents = catalog if catalog is not None else AgentCatalog.discover()
    async with AsyncExitStack() as stack:
        # The llm agent's model client: one per process, closed after the runs have drained.
        llm_client = open_client(settings.llm)
        if llm_client is not None:
            stack.push_async_callback(llm_client.close)
        agents = bind_llm(agents, settings.llm, llm_client)
        observability = await stack.enter_async_context(
            open_observability(
                "runwire-execution",
                host=settings.host,
                metrics_port=settings.metrics_port,
                telemetry=telemetry,
            )
        )
        traced = observability.telemetry.client_interceptors()
        tls = settings.tls()
        registry_channel = open_channel(
            settings.registry_target, service_names=(REGISTRY_SERVICE,), interceptors=traced, tls=tls
        )
        stack.push_async_callback(registry_channel.close)
        writes = None
        if settings.registry_write_stream:
            writes = RunWrites(
                registry_channel,
                timeout_s=settings.call_timeout_s,
                log=log,
                telemetry=observability.telemetry,
            )
            stack.push_async_callback(writes.aclose)  # after the runs have drained
        registry = GrpcRegistry(registry_channel, call_timeout_s=settings.call_timeout_s, writes=writes)
        # One PublishStream per bridge replica, each on its own channel (opened when first used).
        bridge = StreamPublisher(
            settings.bridge_target,
            # No gRPC retries: the publisher resends unacknowledged batches itself.
            open_channel=lambda replica: open_channel(
                replica, service_names=(BRIDGE_SERVICE,), interceptors=traced, retries=False, tls=tls
            ),
            ack_timeout_s=settings.call_timeout_s,
            log=log,
            telemetry=observability.telemetry,
        )
        stack.push_async_callback(bridge.aclose)
        supervisor = RunSupervisor(log=log)
        stack.push_async_callback(supervisor.abort)
        servicer = ExecutionServicer(
            settings=settings,
            attestor=attestor,
            catalog=agents,
            supervisor=supervisor,
            registry=registry,
            bridge=bridge,
            log=log,
            telemetry=observability.telemetry,
        )
        observability.metrics.register(ExecutionCollector(supervisor, bridge, servicer.start_stream_stats))

        def register(server: grpc.aio.Server) -> None:
            execution_pb2_grpc.add_ExecutionServiceServicer_to_server(servicer, server)

        server = GrpcServer(
            settings,
            [ServiceBinding(EXECUTION_SERVICE, register)],
            interceptors=observability.telemetry.server_interceptors(),
            tls=tls,
        )
        await server.start()

        async def drain_runs() -> None:
            servicer.drain()  # StartRuns streams send their notice and start nothing more
            stop_s = settings.drain_stop_s
            await supervisor.drain(
                finish_within_s=settings.grace_period_s - stop_s,
                stop_within_s=max(0.0, stop_s - DRAIN_MARGIN_S),
            )

        try:
            yield server
        finally:
            await server.drain(drain_runs)
