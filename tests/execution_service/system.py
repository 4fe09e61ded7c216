"""The real registry, bridge and execution services, in-process on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
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
from runwire.bridge.v1 import bridge_pb2, bridge_pb2_grpc
from runwire.common.v1 import context_pb2, event_pb2, run_pb2
from runwire.execution.v1 import execution_pb2, execution_pb2_grpc
from runwire.registry.v1 import registry_pb2, registry_pb2_grpc
from runwire_common import names
from runwire_common.server import GrpcServer

CALL_TIMEOUT_S = 10.0
EVENT_TIMEOUT_S = 10.0


@dataclass
class Watcher:
    """One ``Subscribe`` stream of a user, collecting its events in the background."""

    events: list[event_pb2.RunEvent] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def of(self, run_id: str) -> list[event_pb2.RunEvent]:
        return [e for e in self.events if e.run_id == run_id]

    async def until_terminal(self, run_id: str) -> list[event_pb2.RunEvent]:
        async with asyncio.timeout(EVENT_TIMEOUT_S):
            while not any(e.type in names.TERMINAL_EVENT_TYPES for e in self.of(run_id)):
                self.changed.clear()
                await self.changed.wait()
        await asyncio.sleep(0.05)  # anything wrongly sent after the terminal event shows up too
        return self.of(run_id)

    async def until(self, run_id: str, event_type: str) -> None:
        async with asyncio.timeout(EVENT_TIMEOUT_S):
            while not any(e.type == event_type for e in self.of(run_id)):
                self.changed.clear()
                await self.changed.wait()


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

    @asynccontextmanager
    async def watch(self, user_id: str) -> AsyncIterator[Watcher]:
        """Subscribe as ``user_id`` (live events only) and collect in the background."""
        watcher = Watcher()
        call = self.bridge.Subscribe(
            bridge_pb2.SubscribeRequest(user_context=self.make_context(user_id), after="")
        )
        ready = asyncio.Event()

        async def pump() -> None:
            async for item in call:
                if item.HasField("replay_complete"):
                    ready.set()
                elif item.HasField("event"):
                    watcher.events.append(item.event)
                    watcher.changed.set()

        task = asyncio.create_task(pump())
        try:
            async with asyncio.timeout(EVENT_TIMEOUT_S):
                await ready.wait()
            yield watcher
        finally:
            call.cancel()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await task


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
