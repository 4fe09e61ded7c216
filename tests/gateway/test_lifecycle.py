"""Lifetime: drain, token expiry, the ready file, configuration and module state."""

from __future__ import annotations

import ast
import asyncio
import gc
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

import gateway
from gateway.connection import Session
from gateway.server import GatewayServer
from gateway.sink import EventSink
from gateway.transport import GatewayConnection
from tests.gateway.conftest import GatewayFactory, TokenFactory, open_ws, recv_json

GATEWAY_DIR = Path(gateway.__file__).parent


def _healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def test_draining_refuses_new_handshakes_and_health_with_503_and_closes_connections_with_1012(
    gateway: GatewayServer, make_token: TokenFactory
) -> None:
    async with open_ws(gateway, make_token()) as ws:
        await recv_json(ws)
        gateway.begin_drain()
        assert await asyncio.to_thread(_healthz, gateway.port) == 503
        with pytest.raises(InvalidStatus) as info:
            async with open_ws(gateway, make_token()):
                pass
        assert info.value.response.status_code == 503
        await gateway.drain()
        with pytest.raises(ConnectionClosed):
            await recv_json(ws)
        assert ws.close_code == 1012


async def test_a_connection_is_closed_with_1008_when_its_token_expires(
    gateway: GatewayServer, make_token: TokenFactory
) -> None:
    async with open_ws(gateway, make_token(ttl_s=2)) as ws:
        await recv_json(ws)
        with pytest.raises(ConnectionClosed):
            await recv_json(ws, timeout=5)
        assert ws.close_code == 1008
        assert ws.close_reason == "token expired"


async def test_the_ready_file_names_the_bound_port_and_pid(
    start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    ready = tmp_path / "run" / "gateway.json"
    server = await start_gateway(ready_file=str(ready))
    assert json.loads(ready.read_text()) == {"port": server.port, "pid": os.getpid()}
    assert list(ready.parent.iterdir()) == [ready]


def test_python_m_gateway_exits_2_on_invalid_configuration(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNWIRE_")}
    result = subprocess.run(
        [sys.executable, "-m", "gateway"], env=env, cwd=GATEWAY_DIR.parent, capture_output=True, timeout=60
    )
    assert result.returncode == 2
    assert b"invalid configuration" in result.stderr


def _module_level_mutables(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found: list[str] = []
    mutable_calls = {"dict", "list", "set", "defaultdict", "deque", "OrderedDict", "Counter"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            found.append(f"{path.name}:{node.lineno} global")
    for node in tree.body:
        value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
        if value is None:
            continue
        is_literal = isinstance(
            value, ast.Dict | ast.List | ast.Set | ast.DictComp | ast.ListComp | ast.SetComp
        )
        is_call = (
            isinstance(value, ast.Call)
            and isinstance(value.func, ast.Name)
            and value.func.id in mutable_calls
        )
        if is_literal or is_call:
            found.append(f"{path.name}:{node.lineno}")
    return found


def test_the_gateway_has_no_module_level_mutable_state() -> None:
    offenders = [hit for path in sorted(GATEWAY_DIR.glob("*.py")) for hit in _module_level_mutables(path)]
    assert offenders == []


def test_no_gateway_module_exceeds_400_lines() -> None:
    long = {p.name: n for p in GATEWAY_DIR.glob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


async def test_a_closed_connection_is_freed_by_reference_counting_without_the_cyclic_collector(
    gateway: GatewayServer, make_token: TokenFactory
) -> None:
    # Cycles through the handshake's subprotocol callback and the session's stop callback kept
    # every closed connection for the cyclic collector: a thousand users leaving paused the
    # gateway for tens of milliseconds, holding up the events of everyone still connected.
    def alive() -> list[str]:
        kinds = (GatewayConnection, Session, EventSink)
        return [type(obj).__name__ for obj in gc.get_objects() if type(obj) in kinds]

    gc.collect()
    gc.disable()
    try:
        for _ in range(5):
            async with open_ws(gateway, make_token(), subprotocols=["runwire.v1"]) as ws:
                assert (await recv_json(ws))["type"] == "connected"
        async with asyncio.timeout(5):
            while gateway.sessions:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert alive() == []
    finally:
        gc.enable()
