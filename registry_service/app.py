"""The registry's composition root.

``running_service`` opens the database engine, migrates the schema when
``migrate_on_start`` is set, builds the servicer, starts the gRPC server and
yields it. On exit the server drains first (in-flight calls still need the
database), then the engine is disposed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import grpc

from registry_service.database import open_database
from registry_service.migrator import upgrade_schema
from registry_service.servicer import SERVICE_NAME, RegistryServicer
from registry_service.settings import RegistrySettings
from runwire.registry.v1 import registry_pb2_grpc
from runwire_common.server import GrpcServer, ServiceBinding


@asynccontextmanager
async def running_service(settings: RegistrySettings) -> AsyncIterator[GrpcServer]:
    """Serve the registry on ``settings.host:settings.port`` (``server.port`` once bound)."""
    async with AsyncExitStack() as stack:
        database = await stack.enter_async_context(open_database(settings.database()))
        if settings.migrate_on_start:
            await upgrade_schema(database.write_engine())
        servicer = RegistryServicer(
            database,
            attestor=settings.attestor(),
            max_live_runs_per_user=settings.max_live_runs_per_user,
        )

        def register(server: grpc.aio.Server) -> None:
            registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server)

        server = GrpcServer(settings, [ServiceBinding(name=SERVICE_NAME, register=register)])
        stack.push_async_callback(server.stop_now)  # only matters if start() fails half-way
        await server.start()
        stack.push_async_callback(server.drain)
        yield server
