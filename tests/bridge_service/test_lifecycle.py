"""Draining, the process entry point, and the no-global-state rule."""

from __future__ import annotations

import ast
import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import grpc
import pytest

import bridge_service
from bridge_service.app import running_service
from runwire.bridge.v1 import bridge_pb2, bridge_pb2_grpc
from tests.bridge_service.harness import (
    ContextFactory,
    SettingsFactory,
    event,
    read_events,
    read_item,
    read_until_replay_complete,
)
from tests.bridge_service.process import spawn_bridge

PACKAGE_DIR = Path(bridge_service.__file__).parent


async def test_draining_ends_live_streams_with_their_cursor_well_within_the_grace_period(
    make_settings: SettingsFactory, make_context: ContextFactory
) -> None:
    service = running_service(make_settings(grace_period_s=20))
    server = await service.__aenter__()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = bridge_pb2_grpc.BridgeServiceStub(channel)
            ctx = make_context()
            call = stub.Subscribe(bridge_pb2.SubscribeRequest(user_context=ctx))
            await read_until_replay_complete(call)
            response = await stub.Publish(
                bridge_pb2.PublishRequest(user_context=ctx, events=[event(ctx)]), timeout=5
            )
            await read_events(call, 1)

            started = time.monotonic()
            stopping = asyncio.create_task(service.__aexit__(None, None, None))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await read_item(call)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert caught.value.details() == f"bridge is draining; resume after {response.event_ids[0]}"
            await stopping
            assert time.monotonic() - started < 5
    finally:
        if not server.draining.is_set():
            await service.__aexit__(None, None, None)


async def test_python_dash_m_bridge_service_serves_and_exits_cleanly_on_sigterm(
    tmp_path: Path, attestation_key_spec: str, make_context: ContextFactory
) -> None:
    ready = tmp_path / "ready.json"
    env = {
        **os.environ,
        "RUNWIRE_ATTESTATION_KEYS": attestation_key_spec,
        "RUNWIRE_BRIDGE_PORT": "0",
        "RUNWIRE_BRIDGE_READY_FILE": str(ready),
    }
    process, port = await spawn_bridge(env, ready, stderr=asyncio.subprocess.PIPE)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            ctx = make_context()
            response = await bridge_pb2_grpc.BridgeServiceStub(channel).Publish(
                bridge_pb2.PublishRequest(user_context=ctx, events=[event(ctx)]), timeout=5
            )
            assert len(response.event_ids) == 1
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            _, stderr = await process.communicate()
        assert process.returncode == 0, stderr.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_bad_configuration_exits_with_status_two(attestation_key_spec: str) -> None:
    env = {
        **os.environ,
        "RUNWIRE_ATTESTATION_KEYS": attestation_key_spec,
        "RUNWIRE_BRIDGE_LOG_CAPACITY": "-1",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge_service",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(20):
        _, stderr = await process.communicate()
    assert process.returncode == 2
    assert b"log_capacity" in stderr


MUTABLE_CALLS = frozenset({"dict", "list", "set", "defaultdict", "deque", "OrderedDict", "Counter"})


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Call):
        node = node.func
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""


def _module_level_problems(tree: ast.Module) -> list[str]:
    problems = [f"line {node.lineno}: global" for node in ast.walk(tree) if isinstance(node, ast.Global)]
    for statement in tree.body:
        value = statement.value if isinstance(statement, ast.Assign | ast.AnnAssign) else None
        if isinstance(value, ast.Dict | ast.List | ast.Set | ast.DictComp | ast.ListComp | ast.SetComp):
            problems.append(f"line {statement.lineno}: mutable literal")
        if isinstance(value, ast.Call) and _name(value.func) in MUTABLE_CALLS:
            problems.append(f"line {statement.lineno}: mutable container")
    for function in ast.walk(tree):
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            cached = [
                d for d in function.decorator_list if _name(d) in {"cache", "lru_cache", "cached_property"}
            ]
            problems += [f"line {function.lineno}: cached accessor" for _ in cached]
    return problems


@pytest.mark.parametrize("path", sorted(PACKAGE_DIR.glob("*.py")), ids=lambda p: p.name)
def test_bridge_modules_hold_no_module_level_mutable_state(path: Path) -> None:
    assert _module_level_problems(ast.parse(path.read_text())) == []
