"""The registry's composition root.

``running_service`` opens the database engine, migrates the schema when
``migrate_on_start`` is set, opens the channel to the bridge (when
``bridge_target`` is set), builds the servicer, starts the gRPC server, then
starts the death sweeper and the retention purger (unless ``retention_days``
is 0) and yields the server. On exit the server drains, stopping both first
(a sweep or purge batch in progress may finish); in-flight
calls still need the database, so the bridge channel is closed and the
engine disposed only after that.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import grpc

from registry_service.database import open_database
from registry_service.metrics import RegistryMetrics
from registry_service.migrator import upgrade_schema
from registry_service.notifier import BRIDGE_SERVICE_NAME, BridgeDeathNotifier
from registry_service.retention import RetentionPolicy, RetentionPurger
from registry_service.servicer import SERVICE_NAME, RegistryServicer
from registry_service.settings import RegistrySettings
from registry_service.sweeper import DeathSweeper, SweepPolicy
from runwire.bridge.v1 import bridge_pb2_grpc
from runwire.registry.v1 import registry_pb2_grpc
from runwire_common.channels import open_channel
from runwire_common.observability import open_observability
from runwire_common.server import GrpcServer, ServiceBinding
from runwire_common.telemetry import Telemetry

log = logging.getLogger("runwire.registry")


@asynccontextmanager
async def running_service(
    settings: RegistrySettings, *, telemetry: Telemetry | None = None
) -> AsyncIterator[GrpcServer]:
    """Serve the registry on ``settings.host:settings.port`` (``server.port`` once bound).

    ``telemetry`` replaces the tracing configured by ``OTEL_*`` (tests pass one).
    """
    async with AsyncExitStack() as stack:
        observability = await stack.enter_async_context(
            open_observability(
                "runwire-registry",
                host=settings.host,
                metrics_port=settings.metrics_port,
                telemetry=telemetry,
            )
        )
        tracing = observability.telemetry
        metrics = RegistryMetrics(observability.metrics)
        database = await stack.enter_async_context(open_database(settings.database()))
        if settings.migrate_on_start:
            await upgrade_schema(database.write_engine())
        attestor = settings.attestor()
        tls = settings.tls()
        notifier = None
        if settings.bridge_target:
            channel = open_channel(
                settings.bridge_target,
                service_names=(BRIDGE_SERVICE_NAME,),
                interceptors=tracing.client_interceptors(),
                tls=tls,
            )
            stack.push_async_callback(channel.close)
            notifier = BridgeDeathNotifier(
                bridge_pb2_grpc.BridgeServiceStub(channel),
                attestor=attestor,
                call_timeout_s=settings.call_timeout_s,
            )
        else:
            log.warning(
                "no bridge_target configured: runs without heartbeat are marked dead, "
                "but their owners are not told until a bridge is configured"
            )
        servicer = RegistryServicer(
            database,
            attestor=attestor,
            max_live_runs_per_user=settings.max_live_runs_per_user,
            metrics=metrics,
            telemetry=tracing,
        )
        sweeper = DeathSweeper(
            database,
            policy=SweepPolicy(
                heartbeat_timeout_s=settings.heartbeat_timeout_s,
                interval_s=settings.death_sweep_interval_s,
                batch=settings.death_sweep_batch,
                lease_s=settings.death_notice_lease_s,
                end_notice_delay_s=settings.end_notice_delay_s,
            ),
            notifier=notifier,
            metrics=metrics,
        )
        purger = None
        if settings.retention_days > 0:
            purger = RetentionPurger(
                database,
                policy=RetentionPolicy(
                    retention_s=settings.retention_days * 86_400,
                    interval_s=settings.retention_interval_s,
                    batch=settings.retention_batch,
                ),
                metrics=metrics,
            )

        def register(server: grpc.aio.Server) -> None:
            registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server)

        server = GrpcServer(
            settings,
            [ServiceBinding(name=SERVICE_NAME, register=register)],
            interceptors=tracing.server_interceptors(),
            tls=tls,
        )
        stack.push_async_callback(server.stop_now)  # only matters if start() fails half-way
        await server.start()
        # Also after the drain, in case the drain hook timed out or never ran.
        stack.push_async_callback(sweeper.stop, timeout_s=0)
        sweeper.start()
        if purger is not None:
            stack.push_async_callback(purger.stop, timeout_s=0)
            purger.start()
        stop_timeout_s = settings.grace_period_s / 2

        async def stop_background() -> None:
            servicer.drain()
            stops = [sweeper.stop(timeout_s=stop_timeout_s)]
            if purger is not None:
                stops.append(purger.stop(timeout_s=stop_timeout_s))
            await asyncio.gather(*stops)

        stack.push_async_callback(server.drain, stop_background)
        yield server
