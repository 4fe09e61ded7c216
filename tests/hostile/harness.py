"""The whole backend in-process for the hostile-input suites.

One real registry (SQLite file), bridge, execution service and gateway on
loopback, with the edge limits raised so thousands of generated frames fit in
one connection. Everything here is test plumbing; the properties live in the
``test_*`` modules.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import SecretStr
from websockets.asyncio.client import ClientConnection, connect

from bridge_service.app import running_service as running_bridge
from bridge_service.settings import BridgeSettings
from execution_service.app import running_service as running_execution
from execution_service.settings import ExecutionSettings
from gateway.app import running_gateway
from gateway.server import GatewayServer
from gateway.settings import GatewaySettings
from registry_service.app import running_service as running_registry
from registry_service.settings import RegistrySettings
from runwire.bridge.v1 import bridge_pb2_grpc
from runwire.common.v1 import context_pb2
from runwire.execution.v1 import execution_pb2_grpc
from runwire.registry.v1 import registry_pb2_grpc
from runwire_common.ids import new_id
from runwire_common.server import GrpcServer
from tests.support.watcher import Watcher
from tests.support.watcher import watching as watch_bridge

JWT_SECRET = "hostile-test-secret-" + "h" * 40
# Every reply a well-formed request can get, and every error code of the protocol (brief §6).
ERROR_CODES = frozenset(
    {
        "invalid_message",
        "unknown_type",
        "invalid_argument",
        "not_found",
        "unauthenticated",
        "permission_denied",
        "resource_exhausted",
        "rate_limited",
        "failed_precondition",
        "unavailable",
        "internal",
    }
)
EVENT_TYPES = frozenset(
    {
        "agent_started",
        "agent_thinking",
        "tool_executing",
        "tool_completed",
        "partial_result",
        "agent_completed",
        "agent_error",
        "agent_cancelled",
        "agent_death",
    }
)
TERMINAL_EVENT_TYPES = frozenset({"agent_completed", "agent_error", "agent_cancelled", "agent_death"})
REPLY_TIMEOUT_S = 5.0
WATCH_TIMEOUT_S = 15.0


@dataclass
class Stack:
    """The four running services and client stubs of the three gRPC ones."""

    gateway: GatewayServer
    registry_server: GrpcServer
    bridge_server: GrpcServer
    execution_server: GrpcServer
    registry: registry_pb2_grpc.RegistryServiceAsyncStub
    bridge: bridge_pb2_grpc.BridgeServiceAsyncStub
    execution: execution_pb2_grpc.ExecutionServiceAsyncStub
    channels: dict[str, grpc.aio.Channel]

    def token(self, user_id: str | None = None, *, ttl_s: float = 3600) -> str:
        claims = {"sub": user_id or new_id("user"), "exp": int(time.time() + ttl_s)}
        return jwt.encode(claims, JWT_SECRET, algorithm="HS256")

    async def connect(self, user_id: str | None = None) -> ClientConnection:
        """A gateway connection past its ``connected`` frame."""
        ws = await connect(
            f"ws://127.0.0.1:{self.gateway.port}/ws",
            additional_headers={"Authorization": f"Bearer {self.token(user_id)}"},
            open_timeout=REPLY_TIMEOUT_S,
            max_size=None,
        )
        hello = json.loads(await asyncio.wait_for(ws.recv(), REPLY_TIMEOUT_S))
        assert hello["type"] == "connected", hello
        return ws

    async def gateway_health(self) -> int:
        """The HTTP status of ``GET /healthz`` on the gateway port."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.gateway.port)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            await writer.drain()
            status_line = await asyncio.wait_for(reader.readline(), REPLY_TIMEOUT_S)
            return int(status_line.split()[1])
        finally:
            writer.close()

    async def services_serving(self) -> dict[str, bool]:
        """``grpc.health.v1`` of each gRPC service: is it SERVING?"""
        result: dict[str, bool] = {}
        for name, channel in self.channels.items():
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=REPLY_TIMEOUT_S)
            result[name] = reply.status == health_pb2.HealthCheckResponse.SERVING
        return result


@asynccontextmanager
async def running_stack(data_dir: Path, key_spec: str, **gateway_overrides: Any) -> AsyncIterator[Stack]:
    """Start registry, bridge, execution and gateway; drain them in reverse order on exit."""
    keys = SecretStr(key_spec)
    async with AsyncExitStack() as stack:
        bridge = await stack.enter_async_context(
            running_bridge(BridgeSettings(attestation_keys=keys, grace_period_s=2))
        )
        registry = await stack.enter_async_context(
            running_registry(
                RegistrySettings(
                    attestation_keys=keys,
                    database_url=f"sqlite+aiosqlite:///{data_dir / 'registry.db'}",
                    grace_period_s=2,
                    # Generated frames start real runs; the quota itself is tested elsewhere.
                    max_live_runs_per_user=100_000,
                )
            )
        )
        execution = await stack.enter_async_context(
            running_execution(
                ExecutionSettings(
                    attestation_keys=keys,
                    registry_target=registry.address,
                    bridge_target=bridge.address,
                    heartbeat_interval_s=0.5,
                    cancel_grace_s=0.5,
                    grace_period_s=3,
                    # A generated script may sleep for minutes; end such runs soon.
                    default_timeout_s=5,
                    tool_timeout_s=3,
                )
            )
        )
        settings: dict[str, Any] = {
            "attestation_keys": key_spec,
            "execution_target": execution.address,
            "registry_target": registry.address,
            "bridge_target": bridge.address,
            "ws_port": 0,
            "jwt_secret": JWT_SECRET,
            "call_timeout_s": 5.0,
            "grace_period_s": 2.0,
            "rate_limit_messages": 1_000_000,
            "run_start_rate_limit": 1_000_000,
            "max_connections_per_user": 50,
        }
        gateway = await stack.enter_async_context(
            running_gateway(GatewaySettings(**(settings | gateway_overrides)))
        )
        channels = {
            name: await stack.enter_async_context(grpc.aio.insecure_channel(server.address))
            for name, server in (("registry", registry), ("bridge", bridge), ("execution", execution))
        }
        yield Stack(
            gateway=gateway,
            registry_server=registry,
            bridge_server=bridge,
            execution_server=execution,
            registry=registry_pb2_grpc.RegistryServiceStub(channels["registry"]),
            bridge=bridge_pb2_grpc.BridgeServiceStub(channels["bridge"]),
            execution=execution_pb2_grpc.ExecutionServiceStub(channels["execution"]),
            channels=channels,
        )


def watching(stack: Stack, ctx: context_pb2.UserContext) -> AbstractAsyncContextManager[Watcher]:
    """Subscribe (live only) with ``ctx`` and collect events until the block ends."""
    return watch_bridge(stack.bridge, ctx, timeout_s=WATCH_TIMEOUT_S)
