"""Runs through the gateway against the real registry, bridge and execution services."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from gateway.server import GatewayServer
from tests.gateway.conftest import GatewayFactory, TokenFactory, open_ws, recv_json, recv_until

pytest.importorskip("execution_service.app")
pytest.importorskip("registry_service.app")

from execution_service.app import running_service as running_execution
from execution_service.settings import ExecutionSettings
from registry_service.app import running_service as running_registry
from registry_service.settings import RegistrySettings

ALICE = "user_alice_0123456789"
TERMINAL = frozenset({"agent_completed", "agent_error", "agent_cancelled", "agent_death"})


@pytest.fixture
async def platform(
    tmp_path: Path, attestation_key_spec: str, bridge_target: str, start_gateway: GatewayFactory
) -> AsyncIterator[GatewayServer]:
    """Registry (SQLite) + bridge + execution + gateway, all on loopback."""
    async with AsyncExitStack() as stack:
        registry = await stack.enter_async_context(
            running_registry(
                RegistrySettings(
                    attestation_keys=attestation_key_spec,
                    database_url=f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}",
                )
            )
        )
        registry_target = f"127.0.0.1:{registry.port}"
        execution = await stack.enter_async_context(
            running_execution(
                ExecutionSettings(
                    attestation_keys=attestation_key_spec,
                    registry_target=registry_target,
                    bridge_target=bridge_target,
                )
            )
        )
        yield await start_gateway(
            execution_target=f"127.0.0.1:{execution.port}", registry_target=registry_target
        )
        # The gateway drains first (its fixture exits before this stack).


@pytest.fixture
async def alice(platform: GatewayServer, make_token: TokenFactory) -> AsyncIterator[ClientConnection]:
    async with open_ws(platform, make_token(ALICE)) as ws:
        assert (await recv_json(ws))["type"] == "connected"
        yield ws


async def send(ws: ClientConnection, frame: dict[str, Any]) -> None:
    await ws.send(json.dumps(frame))


async def run_to_end(ws: ClientConnection, run_id: str) -> list[dict[str, Any]]:
    """Collect this run's events until its terminal event."""
    events: list[dict[str, Any]] = []
    while True:
        frame = await recv_json(ws, timeout=15)
        if frame.get("run_id") == run_id and "event_id" in frame:
            events.append(frame)
            if frame["type"] in TERMINAL:
                return events


SCRIPT = {
    "steps": [{"think": "planning"}, {"tool": "echo", "args": {"text": "hi"}}, {"partial": "Hel"}],
    "result": "Hello",
}


async def test_run_start_answers_run_accepted_and_then_streams_the_runs_events_in_order(
    alice: ClientConnection,
) -> None:
    await send(alice, {"type": "run.start", "id": "s1", "agent": "scripted", "input": SCRIPT})
    accepted = await recv_until(alice, "run.accepted")
    run = accepted["run"]
    assert accepted["id"] == "s1"
    assert run["agent"] == "scripted"
    assert run["thread_id"].startswith("thread_")
    assert run["input"] == SCRIPT
    assert run["state"] in ("pending", "starting", "running", "completing", "completed")
    events = await run_to_end(alice, run["run_id"])
    types = [e["type"] for e in events]
    assert types[0] == "agent_started"
    assert types[-1] == "agent_completed"
    assert {"agent_thinking", "tool_executing", "tool_completed", "partial_result"} <= set(types)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["payload"]["final_response"] == "Hello"
    assert all(e["user_id"] == ALICE and e["thread_id"] == run["thread_id"] for e in events)


async def test_run_get_and_runs_list_return_the_users_runs(alice: ClientConnection) -> None:
    thread = "thread_0123456789abcdef0123"
    await send(
        alice, {"type": "run.start", "id": 1, "agent": "scripted", "input": SCRIPT, "thread_id": thread}
    )
    run = (await recv_until(alice, "run.accepted"))["run"]
    assert run["thread_id"] == thread
    await run_to_end(alice, run["run_id"])
    await send(alice, {"type": "run.get", "id": 2, "run_id": run["run_id"]})
    got = await recv_until(alice, "run")
    assert got["id"] == 2
    assert got["run"]["state"] == "completed"
    assert got["run"]["finished_at"] is not None
    assert got["run"]["error"] is None
    await send(alice, {"type": "runs.list", "id": 3, "thread_id": thread, "state": "completed", "limit": 10})
    listed = await recv_until(alice, "runs")
    assert listed["id"] == 3
    assert [r["run_id"] for r in listed["runs"]] == [run["run_id"]]
    assert "next_page_token" in listed


async def test_run_get_of_an_unknown_run_is_not_found(alice: ClientConnection) -> None:
    await send(alice, {"type": "run.get", "id": "g", "run_id": "run_ffffffffffffffffffffffffffffffff"})
    reply = await recv_until(alice, "error")
    assert (reply["id"], reply["code"]) == ("g", "not_found")


async def test_another_users_run_is_not_found(
    platform: GatewayServer, alice: ClientConnection, make_token: TokenFactory
) -> None:
    await send(alice, {"type": "run.start", "id": 1, "agent": "scripted", "input": SCRIPT})
    run = (await recv_until(alice, "run.accepted"))["run"]
    async with open_ws(platform, make_token("user_mallory_0123456789")) as mallory:
        await recv_json(mallory)
        await send(mallory, {"type": "run.get", "id": "m", "run_id": run["run_id"]})
        assert (await recv_until(mallory, "error"))["code"] == "not_found"
        await send(mallory, {"type": "run.cancel", "id": "c", "run_id": run["run_id"]})
        assert (await recv_until(mallory, "error"))["code"] == "not_found"
    await run_to_end(alice, run["run_id"])
    assert platform.events_blocked_owner_mismatch == 0


async def test_an_unknown_agent_is_not_found(alice: ClientConnection) -> None:
    await send(alice, {"type": "run.start", "id": "u", "agent": "no_such_agent", "input": {}})
    reply = await recv_until(alice, "error")
    assert (reply["id"], reply["code"]) == ("u", "not_found")


async def test_run_cancel_answers_run_cancelling_and_the_run_ends_cancelled(alice: ClientConnection) -> None:
    script = {"steps": [{"sleep_ms": 5000}], "result": "never"}
    await send(alice, {"type": "run.start", "id": 1, "agent": "scripted", "input": script})
    run = (await recv_until(alice, "run.accepted"))["run"]
    await send(alice, {"type": "run.cancel", "id": 2, "run_id": run["run_id"]})
    # The reply and the run's terminal event race; both must arrive.
    seen: dict[str, dict[str, Any]] = {}
    while not {"run.cancelling", "agent_cancelled"} <= seen.keys():
        frame = await recv_json(alice, timeout=15)
        seen[frame["type"]] = frame
    reply = seen["run.cancelling"]
    assert (reply["id"], reply["run"]["run_id"]) == (2, run["run_id"])
    assert reply["run"]["state"] in ("cancelled", "running", "starting", "pending")
    assert seen["agent_cancelled"]["run_id"] == run["run_id"]


async def test_a_busy_thread_rejects_a_second_run_with_failed_precondition(alice: ClientConnection) -> None:
    thread = "thread_busy_0123456789abcdef"
    slow = {"steps": [{"sleep_ms": 1500}], "result": "done"}
    await send(alice, {"type": "run.start", "id": 1, "agent": "scripted", "input": slow, "thread_id": thread})
    first = (await recv_until(alice, "run.accepted"))["run"]
    await send(alice, {"type": "run.start", "id": 2, "agent": "scripted", "input": slow, "thread_id": thread})
    reply = await recv_until(alice, "error")
    assert (reply["id"], reply["code"]) == (2, "failed_precondition")
    await run_to_end(alice, first["run_id"])


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "start_agent", "payload": {"user_request": "what is 2 + 3?"}},
        {"type": "user_message", "content": "what is 2 + 3?"},
        {"type": "chat", "text": "what is 2 + 3?"},
    ],
    ids=["start_agent", "user_message", "chat"],
)
async def test_compat_aliases_start_a_run_of_the_default_assistant(
    alice: ClientConnection, frame: dict[str, Any]
) -> None:
    await send(alice, frame)
    accepted = await recv_until(alice, "run.accepted")
    assert accepted["run"]["agent"] == "assistant"
    assert accepted["run"]["input"] == {"message": "what is 2 + 3?"}
    events = await run_to_end(alice, accepted["run"]["run_id"])
    assert events[-1]["type"] == "agent_completed"
    assert "5" in events[-1]["payload"]["final_response"]


async def test_a_client_that_reconnects_with_its_last_event_id_misses_nothing(
    platform: GatewayServer, make_token: TokenFactory
) -> None:
    token = make_token(ALICE)
    script = {"steps": [{"partial": f"p{n}"} for n in range(6)] + [{"sleep_ms": 300}], "result": "ok"}
    async with open_ws(platform, token) as ws:
        await recv_json(ws)
        await send(ws, {"type": "run.start", "id": 1, "agent": "scripted", "input": script})
        run = (await recv_until(ws, "run.accepted"))["run"]
        first = await recv_until(ws, "agent_started")
    # Disconnected; the run goes on. Reconnect after the first event.
    async with open_ws(platform, token, path=f"/ws?after={first['event_id']}") as ws:
        await recv_json(ws)
        events = await run_to_end(ws, run["run_id"])
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(2, len(events) + 2))
    assert events[-1]["type"] == "agent_completed"


async def test_agents_list_names_every_agent_with_its_tools(alice: ClientConnection) -> None:
    await send(alice, {"type": "agents.list", "id": "ag"})
    reply = await recv_until(alice, "agents")
    assert reply["id"] == "ag"
    agents = {agent["name"]: agent for agent in reply["agents"]}
    assert {"assistant", "scripted"} <= set(agents)
    tools = {tool["name"]: tool for tool in agents["assistant"]["tools"]}
    assert "calculator" in tools and tools["calculator"]["description"]
    assert set(tools["calculator"]) == {"name", "description"}
    await send(alice, {"type": "agents.list"})
    assert (await recv_until(alice, "error"))["code"] == "invalid_argument"  # 'id' is required
