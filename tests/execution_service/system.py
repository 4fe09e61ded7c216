"""The real registry, bridge and execution services, in-process on loopback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from pydantic import SecretStr

from bridge_service.app import running_service as running_bridge
from bridge_service.settings import BridgeSettings
from execution_service.app import running_service as running_execution
from execution_service.catalog import AgentCatalog
from execution_service.settings import ExecutionSettings
from registry_service.app import running_service as running_registry
from registry_service.settings import RegistrySettings
from runwire.bridge.v1 import bridge_pb2_grpc
from runwire.common.v1 import context_pb2, run_pb2
from runwire.execution.v1 import execution_pb2, execution_pb2_grpc
from runwire.registry.v1 import registry_pb2, registry_pb2_grpc
from runwire_common.server import GrpcServer
from tests.support.watcher import Watcher, watching

CALL_TIMEOUT_S = 10.0
EVENT_TIMEOUT_S = 10.0
STRAY_WINDOW_S = 0.05


@dataclass
class ExecutionInstance:
    """One more execution replica against the same registry and bridge."""

    stub: execution_pb2_grpc.ExecutionServiceAsyncStub
    server: GrpcServer
    settings: ExecutionSettings
    stop: Callable[[], Awaitable[None]]


@dataclass
class System:
    execution: execution_pb2_grpc.ExecutionServiceAsyncStub
    registry: registry_pb2_grpc.RegistryServiceAsyncStub
    bridge: bridge_pb2_grpc.BridgeServiceAsyncStub
    execution_server: GrpcServer
    execution_settings: ExecutionSettings
    make_context: Callable[..., context_pb2.UserContext]
    stop_execution: Callable[[], Awaitable[None]]
    add_execution: Callable[..., Awaitable[ExecutionInstance]]

    async def start(
        self, ctx: context_pb2.UserContext, agent: str, agent_input: Any, **fields: Any
    ) -> run_pb2.Run:
        request = execution_pb2.StartRunRequest(
            user_context=ctx,
            agent=agent,
            input_json=agent_input if isinstance(agent_input, str) else json.dumps(agent_input),
            **fields,
        )
        response = await self.execution.StartRun(request, timeout=CALL_TIMEOUT_S)
        return response.run

    async def cancel(self, ctx: context_pb2.UserContext, run_id: str, reason: str = "") -> run_pb2.Run:
        run_ctx = self.make_context(ctx.user_id, run_id=run_id)
        response = await self.execution.CancelRun(
            execution_pb2.CancelRunRequest(user_context=run_ctx, reason=reason), timeout=CALL_TIMEOUT_S
        )
        return response.run

    async def get(self, user_id: str, run_id: str) -> run_pb2.Run:
        response = await self.registry.GetRun(
            registry_pb2.GetRunRequest(user_context=self.make_context(user_id, run_id=run_id)),
            timeout=CALL_TIMEOUT_S,
        )
        return response.run

    def watch(self, user_id: str) -> AbstractAsyncContextManager[Watcher]:
        """Subscribe as ``user_id`` (live events only) and collect in the background.

        ``until_terminal`` waits 50 ms more, so events wrongly sent after the
        terminal event show up in its result.
        """
        return watching(
            self.bridge, self.make_context(user_id), timeout_s=EVENT_TIMEOUT_S, settle_s=STRAY_WINDOW_S
        )


@asynccontextmanager
async def running_system(
    tmp_path: Path,
    key_spec: str,
    make_context: Callable[..., context_pb2.UserContext],
    *,
    catalog: AgentCatalog | None = None,
    **execution_overrides: Any,
) -> AsyncIterator[System]:
    """Bridge, registry and one execution replica, in-process on loopback.

    ``System.add_execution`` starts further replicas on the same registry and
    bridge; every replica is stopped (drained) when the system exits.
    """
    keys = SecretStr(key_spec)
    async with AsyncExitStack() as stack:
        bridge = await stack.enter_async_context(
            running_bridge(BridgeSettings(attestation_keys=keys, grace_period_s=2))
        )
        registry = await stack.enter_async_context(
            running_registry(
                RegistrySettings(
                    attestation_keys=keys,
                    database_url=f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}",
                    grace_period_s=2,
                )
            )
        )
        base: dict[str, Any] = {"heartbeat_interval_s": 0.2, "cancel_grace_s": 1.0, "grace_period_s": 4.0}

        async def add_execution(**overrides: Any) -> ExecutionInstance:
            settings = ExecutionSettings(
                attestation_keys=keys,
                registry_target=registry.address,
                bridge_target=bridge.address,
                **(base | execution_overrides | overrides),
            )
            own = AsyncExitStack()
            stack.push_async_callback(own.aclose)
            server = await own.enter_async_context(running_execution(settings, catalog=catalog))
            # The client channel outlives `stop`, so calls during and after a drain can be made.
            channel = await stack.enter_async_context(grpc.aio.insecure_channel(server.address))
            return ExecutionInstance(
                stub=execution_pb2_grpc.ExecutionServiceStub(channel),
                server=server,
                settings=settings,
                stop=own.aclose,
            )

        first = await add_execution()
        channels = [
            await stack.enter_async_context(grpc.aio.insecure_channel(server.address))
            for server in (registry, bridge)
        ]
        yield System(
            execution=first.stub,
            registry=registry_pb2_grpc.RegistryServiceStub(channels[0]),
            bridge=bridge_pb2_grpc.BridgeServiceStub(channels[1]),
            execution_server=first.server,
            execution_settings=first.settings,
            make_context=make_context,
            stop_execution=first.stop,
            add_execution=add_execution,
        )
