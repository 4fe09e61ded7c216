"""Fixtures of the gateway tests: tokens, a real bridge, a real gateway on 127.0.0.1:0."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import jwt
import pytest
from websockets.asyncio.client import ClientConnection, connect

from bridge_service.app import running_service as running_bridge
from bridge_service.settings import BridgeSettings
from gateway.app import running_gateway
from gateway.server import GatewayServer
from gateway.settings import GatewaySettings
from runwire_common.ids import new_id

JWT_SECRET = "gateway-test-secret-" + "s" * 40
UNUSED_TARGET = "127.0.0.1:9"  # nothing listens; calls there fail UNAVAILABLE

TokenFactory = Callable[..., str]
GatewayFactory = Callable[..., Awaitable[GatewayServer]]


@pytest.fixture
def make_token() -> TokenFactory:
    """``make_token("alice", ttl_s=60, roles=[...])`` → an HS256 JWT signed with the test secret."""

    def factory(
        sub: str | None = None,
        *,
        ttl_s: float = 600,
        secret: str = JWT_SECRET,
        algorithm: str = "HS256",
        **claims: Any,
    ) -> str:
        body: dict[str, Any] = {"sub": sub or new_id("user"), "exp": int(time.time() + ttl_s), **claims}
        return jwt.encode(body, secret, algorithm=algorithm)

    return factory


@pytest.fixture
async def bridge_target(attestation_key_spec: str) -> AsyncIterator[str]:
    async with running_bridge(BridgeSettings(attestation_keys=attestation_key_spec)) as server:
        yield f"127.0.0.1:{server.port}"


@pytest.fixture
async def start_gateway(attestation_key_spec: str, bridge_target: str) -> AsyncIterator[GatewayFactory]:
    """Start gateways with setting overrides; each is drained at the end of the test."""
    async with AsyncExitStack() as stack:

        async def factory(**overrides: Any) -> GatewayServer:
            fields: dict[str, Any] = {
                "attestation_keys": attestation_key_spec,
                "execution_target": UNUSED_TARGET,
                "registry_target": UNUSED_TARGET,
                "bridge_target": bridge_target,
                "ws_port": 0,
                "jwt_secret": JWT_SECRET,
                "call_timeout_s": 2.0,
                "grace_period_s": 2.0,
            }
            fields.update(overrides)
            return await stack.enter_async_context(running_gateway(GatewaySettings(**fields)))

        yield factory


@pytest.fixture
async def gateway(start_gateway: GatewayFactory) -> GatewayServer:
    return await start_gateway()


def ws_url(server: GatewayServer, path: str = "/ws") -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


def open_ws(server: GatewayServer, token: str | None, *, path: str = "/ws", **kwargs: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return connect(ws_url(server, path), additional_headers=headers, open_timeout=5, **kwargs)


async def recv_json(ws: ClientConnection, *, timeout: float = 5.0) -> dict[str, Any]:
    import asyncio

    raw = await asyncio.wait_for(ws.recv(), timeout)
    frame = json.loads(raw)
    assert isinstance(frame, dict)
    return frame


async def recv_until(ws: ClientConnection, kind: str, *, timeout: float = 10.0) -> dict[str, Any]:
    """Skip frames until one of type ``kind`` arrives."""
    import asyncio

    async with asyncio.timeout(timeout):
        while True:
            frame = await recv_json(ws, timeout=timeout)
            if frame["type"] == kind:
                return frame


async def request(ws: ClientConnection, frame: dict[str, Any] | str) -> dict[str, Any]:
    """Send one frame and return the next frame that is not an event."""
    await ws.send(frame if isinstance(frame, str) else json.dumps(frame))
    return await recv_json(ws)
